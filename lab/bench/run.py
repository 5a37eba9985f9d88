"""What every `glasswing bench` does around its measurements: Ctrl-C and SIGTERM still tear the
topology down, and the results land in a JSON file with the machine they were measured on."""
import contextlib
import json
import os
import signal
import sys

from dataplane.host import netns


def _interrupt(*_):
    raise KeyboardInterrupt()


@contextlib.contextmanager
def torn_down(release, say):
    """Run the block; then release(), whatever happened (SIGTERM counts as Ctrl-C)."""
    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        say("\r" + " " * 80 + "\rtearing down")
        release()
        signal.signal(signal.SIGTERM, old)


def write_json(out_dir: str, name: str, **meta) -> str:
    """out_dir/name with the command, kernel and CPU count in front of meta; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump({"command": " ".join(sys.argv), "kernel": os.uname().release,
                   "cpus": os.cpu_count(), **meta}, f, indent=1)
    return path


def iperf3_gbps(r, dest: str) -> float:
    """Received Gbit/s from a finished `iperf3 -J` (a CompletedProcess). iperf3 may exit 0 with
    {"error": ...} and no totals; that is a failure too, with iperf3's own words."""
    try:
        out = json.loads(r.stdout)
    except ValueError:
        out = {}
    total = out.get("end", {}).get("sum_received") if isinstance(out, dict) else None
    if r.returncode != 0 or not total:
        why = out.get("error") if isinstance(out, dict) else None
        raise RuntimeError(f"iperf3 to {dest} failed: {why or (r.stdout[-300:] + r.stderr[-300:])}")
    return total["bits_per_second"] / 1e9


def two_nodes(lab, services: dict) -> tuple[dict, dict]:
    """The benches' topology: nodes n1 and n2, pods client and server on n1, server2 on n2,
    services {name: (port spec, endpoint pod)}, both forwarders up. Returns (pod address by
    pod, VIP by service name)."""
    lab.node("n1")
    lab.node("n2")
    lab.pod("client", "n1")
    lab.pod("server", "n1")
    lab.pod("server2", "n2")
    for name, (port, pod) in services.items():
        lab.service(name, ports=[port], endpoints=[pod])
    lab.up("n1")
    lab.up("n2")
    doc = lab.doc
    return ({n: p["ip"] for n, p in doc["pods"].items()},
            {s["name"]: s["vip"] for s in doc["services"].values()})


def roomy_ports(lab) -> None:
    """Thousands of short connections a second from one address: let connect() reuse
    TIME_WAIT ports (per namespace; the lab's namespaces only), or a path (HAProxy's
    upstream side, the direct baseline) runs out of ports after a few runs and measures
    the port search instead."""
    doc = lab.doc
    names = [p["netns"] for p in doc["pods"].values()] + [n["netns"] for n in doc["nodes"].values()]
    for ns in filter(None, names):  # never the host's own (the local node has no netns)
        netns.sysctl("net.ipv4.tcp_tw_reuse", "1", netns=ns)
        netns.sysctl("net.ipv4.ip_local_port_range", "16000 65000", netns=ns)
