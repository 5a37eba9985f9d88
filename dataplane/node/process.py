"""The forwarder as a process: run() in the foreground until told to stop, and wait_gone()
for the process that stops it."""
import asyncio
import os
import resource
import signal
import time

from dataplane.host import netns
from dataplane.node.forwarder import Forwarder
from dataplane.relay import modes as relay_modes
from dataplane.store.kv_open import open_kv
from dataplane.store.registry import Registry


def run(store_url: str, node: str, run_root: str, relay: str = relay_modes.BUILT_IN_DEFAULT) -> int:
    """Foreground entry: enter the node's namespace, serve until told to stop."""
    # Every relayed connection holds two sockets and two pipes (six fds): the
    # default soft limit of 1024 would cap a node at ~170 connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            want = max(hard, min(int(f.read()), 1 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard limit
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    kv = open_kv(store_url)
    store = Registry(kv, store_url)
    doc = store.read()
    rec = doc["nodes"].get(node)
    if rec and rec.get("netns"):
        if hasattr(kv, "netns_fd"):
            kv.netns_fd = netns.self_fd()  # the store is reached from where this started
        netns.setns(netns.open_fd(rec["netns"]))  # before any thread exists
    home_fd = netns.self_fd()

    async def main():
        fwd = Forwarder(store, node, run_root, home_fd, relay=relay)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fwd.stopping.set)
        await fwd.start()
        try:
            await fwd.stopping.wait()
        finally:
            await fwd.stop()
        return 0

    return asyncio.run(main())


def wait_gone(pid: int, timeout: float) -> bool:
    """True once pid has exited. A forwarder started by this process (tests,
    the demo) stays a zombie until reaped: reap it, do not wait on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass  # not our child: someone else reaps it
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.02)
    return False
