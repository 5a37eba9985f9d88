"""Nodes and pods on this machine: namespaces, veths, addresses and routes.

    underlay ns (simulated nodes only)      one bridge, br0
        |  198.18.0.0/24                    node i has 198.18.0.i on ul0
    node ns (the host itself for "local")   blackhole 198.19.0.0/16 (services)
        |  gw<hash>  198.18.i.1/32          routes 198.18.i.N/32 to each pod
    pod ns                                  eth0 198.18.i.N/32, lo up
                                            routes only inside 198.18.0.0/15

Every step that changes the kernel pushes its undo onto an Undo, so a
failure part way leaves nothing half-made. Undo steps open their own netlink
socket: the ones a step used are closed by the time an undo runs.

All of it goes over netlink (dataplane.host.netlink) and the namespace calls
in dataplane.host.netns; nothing here spawns `ip`.
"""
import hashlib
import ipaddress
import os

from dataplane.errors import GlasswingError
from dataplane.host import cgroups
from dataplane.host import netlink
from dataplane.host import netns
from dataplane.store import names
from dataplane.settings import LOCAL_NODE, MESH_RANGE, SERVICE_RANGE, UNDERLAY


class Undo:
    """A stack of undo steps run in reverse unless the block succeeded."""

    def __init__(self):
        self.steps = []

    def push(self, fn, *args):
        self.steps.append((fn, args))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            for fn, args in reversed(self.steps):
                try:
                    fn(*args)
                except Exception:  # noqa: BLE001 - best effort, the first error is what matters
                    pass
        return False


def _ifname(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha1("/".join(parts).encode()).hexdigest()[:10]


def ns_name(cluster: str, kind: str, name: str) -> str:
    return f"gw-{cluster}-{kind}-{name}"


def underlay_ns(cluster: str) -> str:
    return f"gw-{cluster}-underlay"


def cgroup_base(cluster: str) -> str:
    return os.path.join(cgroups.cgroup2_root(), "glasswing", cluster)


def forwarder_cgroup(cluster: str, node: str) -> str:
    return os.path.join(cgroup_base(cluster), "nodes", node, "forwarder")


# ---------------------------------------------------------------- nodes

def ensure_local_node(doc: dict) -> dict:
    nodes = doc["nodes"]
    if LOCAL_NODE not in nodes:
        nodes[LOCAL_NODE] = _node_record(doc, LOCAL_NODE, None, None)
    return nodes[LOCAL_NODE]


def ensure_blackhole(node: dict) -> None:
    """An unredirected service address must go nowhere, even if something
    (libvirt, say) turned on forwarding in the node's namespace."""
    with netlink.opened(node.get("netns")) as nl:
        nl.add_blackhole(str(SERVICE_RANGE), replace=True)


def _node_record(doc, name, address, ns):
    used = {n["index"] for n in doc["nodes"].values()}
    index = next(i for i in range(1, 255) if i not in used)
    return {"index": index, "ip": address, "netns": ns,
            "pod_cidr": f"198.18.{index}.0/24", "gateway": f"198.18.{index}.1"}


def get_node(doc: dict, name: str) -> dict:
    if name == LOCAL_NODE:
        return ensure_local_node(doc)
    try:
        return doc["nodes"][name]
    except KeyError:
        raise GlasswingError(f"unknown node {name!r} (see `glasswing node list`)") from None


def add_node(doc: dict, name: str) -> dict:
    """A simulated node: its own namespace on the shared underlay bridge."""
    names.name("node", name)
    if name == LOCAL_NODE or name in doc["nodes"]:
        raise GlasswingError(f"node {name!r} already exists")
    cluster = doc["cluster"]
    rec = _node_record(doc, name, None, ns_name(cluster, "node", name))
    if rec["index"] > 250:
        raise GlasswingError("too many nodes: at most 250")
    rec["ip"] = str(UNDERLAY.network_address + rec["index"])
    ul, ns = underlay_ns(cluster), rec["netns"]
    peers = [n for n in doc["nodes"].values() if n.get("netns")]
    with Undo() as undo:
        if not netns.exists(ul):
            netns.create(ul)
            undo.push(netns.delete, ul, False)
            with netlink.opened(ul) as under:
                under.add_bridge("br0")
                under.up("br0")
        netns.create(ns)
        undo.push(netns.delete, ns, False)
        port = _ifname("u", cluster, name)
        with netlink.opened(ul) as under:
            under.add_veth(port, "ul0", ns)
            under.enslave(port, "br0")
        with netlink.opened(ns) as node:
            node.up("lo")
            node.add_address("ul0", f"{rec['ip']}/{UNDERLAY.prefixlen}")
            node.up("ul0")
            node.add_blackhole(str(SERVICE_RANGE))
            netns.sysctl("net.ipv4.ip_forward", "1", netns=ns)
            for peer in peers:
                node.add_route(peer["pod_cidr"], via=peer["ip"])
                with netlink.opened(peer["netns"]) as other:
                    other.add_route(rec["pod_cidr"], via=rec["ip"])
                undo.push(netlink.delete_route, peer["netns"], rec["pod_cidr"])
    doc["nodes"][name] = rec
    return rec


def remove_node(doc: dict, name: str) -> None:
    rec = get_node(doc, name)
    on_it = sorted(p for p, pod in doc["pods"].items() if pod["node"] == name)
    if on_it:
        raise GlasswingError(f"node {name!r} still has pods: {', '.join(on_it)}")
    del doc["nodes"][name]
    if not rec.get("netns"):
        netlink.delete_route(None, str(SERVICE_RANGE), blackhole=True)
        return
    for peer in doc["nodes"].values():
        if peer.get("netns"):
            netlink.delete_route(peer["netns"], rec["pod_cidr"])
    netns.delete(rec["netns"], check=False)
    cgroups.remove(os.path.dirname(forwarder_cgroup(doc["cluster"], name)))
    if not any(n.get("netns") for n in doc["nodes"].values()):
        netns.delete(underlay_ns(doc["cluster"]), check=False)


# ---------------------------------------------------------------- pods

def _pick_ip(doc: dict, node: dict, wanted: str = None) -> str:
    cidr = ipaddress.IPv4Network(node["pod_cidr"])
    taken = {p["ip"] for p in doc["pods"].values()} | {node["gateway"]}
    if wanted:
        addr = names.address(wanted, cidr, "pod address")
        if addr in taken:
            raise GlasswingError(f"pod address {addr} is already in use")
        return addr
    for host in cidr.hosts():
        if str(host) not in taken:
            return str(host)
    raise GlasswingError(f"no free pod address left in {cidr}")


def add_pod(doc: dict, name: str, node_name: str, address: str = None, ns: str = None,
            cgroup: str = None, labels: dict = None, fail_mode: str = "open",
            namespace: str = "default") -> dict:
    names.name("pod", name)
    names.name("namespace", namespace)
    if name in doc["pods"]:
        raise GlasswingError(f"pod {name!r} already exists")
    if fail_mode not in ("open", "closed"):
        raise GlasswingError(f"invalid fail mode {fail_mode!r}: use open or closed")
    node = get_node(doc, node_name)
    cluster = doc["cluster"]
    addr = _pick_ip(doc, node, address)
    rec = {"node": node_name, "ip": addr, "labels": labels or {}, "fail_mode": fail_mode,
           "namespace": namespace}
    node_ns = node.get("netns")
    with Undo() as undo:
        rec["netns"], rec["netns_owned"] = _pod_netns(cluster, name, ns, undo)
        rec["cgroup"], rec["cgroup_owned"] = _pod_cgroup(cluster, name, cgroup, doc, undo)
        pod_ns = rec["netns"]
        rec["host_if"] = host_if = _ifname("gw", cluster, name)
        rec["pod_if"] = pod_if = "eth0" if rec["netns_owned"] else "gw0"
        with netlink.opened(node_ns) as host, netlink.opened(pod_ns) as pod:
            if pod.exists(pod_if):
                raise GlasswingError(f"namespace {pod_ns} already has an interface {pod_if}")
            host.add_veth(host_if, pod_if, pod_ns)
            undo.push(netlink.delete_link, node_ns, host_if)
            pod.up("lo")
            pod.add_address(pod_if, f"{addr}/32")
            pod.up(pod_if)
            pod.add_route(node["gateway"], dev=pod_if)
            pod.add_route(str(MESH_RANGE), via=node["gateway"], dev=pod_if, src=addr)
            host.add_address(host_if, f"{node['gateway']}/32")
            host.up(host_if)
            host.add_route(f"{addr}/32", dev=host_if)
            host.add_blackhole(str(SERVICE_RANGE), replace=True)
    doc["pods"][name] = rec
    return rec


def _pod_netns(cluster, name, ns, undo):
    if ns is None:
        ns_ = ns_name(cluster, "pod", name)
        if netns.exists(ns_):
            raise GlasswingError(f"network namespace {ns_} already exists")
        netns.create(ns_)
        undo.push(netns.delete, ns_, False)
        return ns_, True
    if ns.startswith("/proc/"):
        parts = ns.split("/")
        if len(parts) != 5 or not parts[2].isdigit() or parts[3:] != ["ns", "net"]:
            raise GlasswingError(f"invalid --netns {ns!r}: use a name in /run/netns or /proc/PID/ns/net")
        ns_ = ns_name(cluster, "pod", name)
        netns.attach(ns_, int(parts[2]))
        undo.push(netns.delete, ns_, False)
        return ns_, False
    if "/" in ns or not netns.exists(ns):
        raise GlasswingError(f"network namespace {ns!r} does not exist")
    return ns, False


def _pod_cgroup(cluster, name, cgroup, doc, undo):
    if cgroup is None:
        path = os.path.join(cgroup_base(cluster), "pods", name)
        if os.path.exists(path):
            raise GlasswingError(f"cgroup {path} already exists")
        os.makedirs(path)
        undo.push(cgroups.remove, path)
        return path, True
    path = cgroups.resolve(cgroup)
    if not os.path.isdir(path):
        raise GlasswingError(f"cgroup {path} does not exist")
    for other, pod in doc["pods"].items():
        if pod["cgroup"] == path:
            raise GlasswingError(f"cgroup {path} already belongs to pod {other!r}")
    return path, False


def remove_pod(doc: dict, name: str) -> dict:
    rec = get_pod(doc, name)
    node = doc["nodes"].get(rec["node"], {})
    netlink.delete_link(node.get("netns"), rec["host_if"])
    if rec["netns_owned"] or rec["netns"].startswith(f"gw-{doc['cluster']}-pod-"):
        if rec["netns_owned"]:
            _kill_netns_procs(rec["netns"])
        netns.delete(rec["netns"], check=False)
    if rec["cgroup_owned"]:
        cgroups.remove(rec["cgroup"])
    del doc["pods"][name]
    return rec


def _kill_netns_procs(ns: str) -> None:
    for pid in netns.pids(ns):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def get_pod(doc: dict, name: str) -> dict:
    try:
        return doc["pods"][name]
    except KeyError:
        raise GlasswingError(f"unknown pod {name!r} (see `glasswing pod list`)") from None


def prune(cluster: str) -> None:
    """Remove the cluster's cgroup directories once nothing is left in them."""
    if not cluster:
        return
    base = cgroup_base(cluster)
    for d in (os.path.join(base, "pods"), os.path.join(base, "nodes"), base, os.path.dirname(base)):
        try:
            if os.path.isdir(d) and not any(os.path.isdir(os.path.join(d, x)) for x in os.listdir(d)):
                os.rmdir(d)
        except OSError:
            pass
