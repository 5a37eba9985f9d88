"""`glasswing doctor`: checks this machine can run the mesh, one line each."""
import os
import shutil
import subprocess

from .output import emit


def _checks():
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
    if os.geteuid() == 0:
        r = subprocess.run(["bpftool", "feature", "probe", "kernel"], capture_output=True, text=True) \
            if shutil.which("bpftool") else None
        need = ("sk_storage", "cgroup_sockopt", "program_type sk_skb is available",
                "map_type sockhash is available", "map_type ringbuf is available")
        missing = [n.split(" is ")[0] for n in need if r is None or n not in r.stdout]
        yield "kernel BPF", not missing, ("cgroup_sock_addr, sock_ops, cgroup_sockopt, sk_storage, sk_skb, "
                                          "sockhash, ringbuf") if not missing else f"missing: {', '.join(missing)}"


def doctor(as_json: bool) -> int:
    results = [{"check": c, "ok": ok, "detail": d} for c, ok, d in _checks()]
    emit(results, as_json, lambda rs: [print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['check']}: {r['detail']}")
                                       for r in rs])
    return 0 if all(r["ok"] for r in results) else 1
