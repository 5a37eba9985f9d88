"""`glasswing doctor`: checks this machine can run the mesh, one line each."""
import os
import shutil
import socket
import subprocess

from .output import emit


def _ipv6():
    """IPv6 is not needed, but where it is on, dual-stack apps (the JVM, gRPC C-core) dial
    IPv4 through AF_INET6 sockets, and apps may dial services' IPv6 VIPs, which only the `6`
    hooks see: say which case this is."""
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6") as f:
            disabled = f.read().strip() != "0"
    except FileNotFoundError:
        return "IPv6 not in this kernel: apps use AF_INET sockets (the 4 hooks)"
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
        sockets = "AF_INET6 sockets can be made"
    except OSError as e:
        sockets = f"AF_INET6 sockets fail ({e.strerror})"
    state = "disabled (net.ipv6.conf.all.disable_ipv6=1)" if disabled else "enabled"
    return f"{state}; {sockets}: dual-stack apps dial IPv4 as ::ffff:a.b.c.d, and IPv6 VIPs natively (the 6 hooks)"


def _hooks(ctl):
    """Whether every hook is attached where the node's running forwarder put it."""
    try:
        where = ctl.hook_attachments()
    except Exception as e:  # noqa: BLE001 - a store or forwarder away is reported, not raised
        yield "hooks", False, f"cannot check: {e}"
        return
    if not where:
        yield "hooks", True, f"no forwarder running for node {ctl.node}: nothing attached to check"
    for place, missing in where:
        yield (f"hooks on {place}", not missing,
               f"missing: {', '.join(missing)}" if missing else "all attached")


def _checks(ctl):
    from dataplane.host import cgroups
    yield "root", os.geteuid() == 0, "run as root"
    try:
        import bcc  # noqa: F401 - importable is the check
        yield "bcc", True, "importable"
    except ImportError:
        yield "bcc", False, "python3-bpfcc not importable (make install)"
    with open("/proc/self/mounts") as f:
        mounts = f.read()
    yield "bpffs", " /sys/fs/bpf bpf " in mounts, "mount -t bpf bpf /sys/fs/bpf"
    try:
        yield "cgroup2", True, cgroups.cgroup2_root()
    except Exception as e:  # noqa: BLE001
        yield "cgroup2", False, str(e)
    build = f"/lib/modules/{os.uname().release}/build"
    yield "kernel headers", os.path.exists(os.path.join(build, "include")), build
    for tool in ("ip", "bpftool", "iperf3"):
        yield tool, shutil.which(tool) is not None, shutil.which(tool) or "not found"
    try:
        from dataplane.relay.engine import IMPL as ENGINE
        from dataplane.relay.pump import IMPL
        yield "relay", IMPL == "cython" and ENGINE == "c", f"pump: {IMPL}, engine: {ENGINE}"
    except Exception as e:  # noqa: BLE001
        yield "relay", False, str(e)
    from dataplane.kernel import relay_gate as kernel_relay
    yield "kernel relay", True, kernel_relay.why_not()  # off is fine: the engine carries the bytes
    try:
        from dataplane.proto import tunnel_pb2  # noqa: F401
        yield "protobuf", True, "tunnel schema built"
    except Exception as e:  # noqa: BLE001
        yield "protobuf", False, f"{e} (make build)"
    yield "ipv6", True, _ipv6()
    if os.geteuid() == 0:
        r = subprocess.run(["bpftool", "feature", "probe", "kernel"], capture_output=True, text=True) \
            if shutil.which("bpftool") else None
        need = ("sk_storage", "cgroup_sockopt", "program_type sk_skb is available",
                "map_type sockhash is available", "map_type ringbuf is available")
        missing = [n.split(" is ")[0] for n in need if r is None or n not in r.stdout]
        yield "kernel BPF", not missing, ("cgroup_sock_addr, sock_ops, cgroup_sockopt, sk_storage, sk_skb, "
                                          "sockhash, ringbuf") if not missing else f"missing: {', '.join(missing)}"
        if shutil.which("bpftool"):
            yield from _hooks(ctl)


def doctor(ctl, as_json: bool) -> int:
    """ctl: the node's dataplane.node.control.Control (whose forwarder's hooks are checked)."""
    results = [{"check": c, "ok": ok, "detail": d} for c, ok, d in _checks(ctl)]
    emit(results, as_json, lambda rs: [print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {r['detail']}")
                                       for r in rs])
    return 0 if all(r["ok"] for r in results) else 1
