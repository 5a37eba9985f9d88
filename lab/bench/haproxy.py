"""HAProxy as the benches' reference, placed where the forwarder sits: in a node's namespace,
so a request crosses the same veths and the same node stack as through the mesh.

One HAProxy process per node, with one thread (`nbthread 1`): the forwarder is one process
whose event loop and HTTP proxy run on one thread, so each side gets one core's worth of
proxy. A listener is in one of two modes:
    tcp   an L4 relay (HAProxy's `mode tcp`), the reference for the mesh through ports
          declared `tcp`
    http  HAProxy's `mode http`: every request parsed, keep-alive to the client
          (`option http-keep-alive`) and idle server connections shared between clients
          (`http-reuse always`), the reference for the mesh through ports declared `http`
          or undeclared (sniffed, then the same HTTP proxy)
Timeouts are the same in both modes (connect 5 s, client and server 2 min).

The processes run in their own sessions; cpu_seconds() sums the user and system time of
every process in them, measured from /proc as the forwarders' CPU is.
"""
import os
import signal
import subprocess
import time

from lab.bench.connections import cpu_seconds

MODES = ("tcp", "http")
CONFIG = """global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m
{listeners}
"""
HTTP_OPTIONS = "    mode http\n    option http-keep-alive\n    http-reuse always\n"


def listener(mode: str, bind: str, port: int, dest: str) -> str:
    """One `listen` section: bind:port relayed to dest ("IP:PORT") in mode tcp or http."""
    if mode not in MODES:
        raise ValueError(f"haproxy mode must be one of {MODES}, not {mode!r}")
    return (f"listen p{port}\n{HTTP_OPTIONS if mode == 'http' else ''}"
            f"    bind {bind}:{port}\n    server s {dest}\n")


def config(listeners: list) -> str:
    return CONFIG.format(listeners="\n".join(listeners))


class HAProxies:
    """The HAProxy processes of one bench; release() kills them all (idempotent)."""

    def __init__(self, work_dir: str):
        self.dir = work_dir
        self.procs = {}  # name -> Popen

    def start(self, name: str, netns: str, listeners: list) -> None:
        """Check the config (HAProxy's own words on a mistake), then run it in netns."""
        cfg = os.path.join(self.dir, f"haproxy-{name}.cfg")
        with open(cfg, "w") as f:
            f.write(config(listeners))
        check = subprocess.run(["haproxy", "-c", "-q", "-f", cfg], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy config {cfg}: {(check.stdout + check.stderr)[-300:]}")
        # `ip netns exec` on purpose: this runs a program in the namespace, which is not
        # netlink (pyroute2 has nothing for it), and haproxy needs no cgroup of the mesh.
        self.procs[name] = subprocess.Popen(["ip", "netns", "exec", netns, "haproxy", "-db", "-f", cfg],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            start_new_session=True)

    def running(self, grace: float = 0.5) -> None:
        """Raise with HAProxy's stderr if a process exited within grace seconds of its start
        (a port taken, an address missing: errors the config check cannot see)."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"haproxy {name} exited: {p.stderr.read().decode()[-300:]}")
            time.sleep(0.05)

    def pids(self, *names) -> list:
        """Every process in the sessions of the named HAProxies (all when none are named)."""
        procs = [self.procs[n] for n in names] if names else list(self.procs.values())
        return [int(x) for p in procs
                for x in subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True,
                                        text=True).stdout.split()]

    def cpu_seconds(self, *names) -> float:
        """User + system CPU seconds of the named HAProxies, from /proc."""
        return sum(cpu_seconds(pid) for pid in self.pids(*names))

    def release(self) -> None:
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = {}
