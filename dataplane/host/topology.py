"""Nodes and pods on this machine: namespaces, veths, addresses and routes.

    underlay ns (simulated nodes only)      one bridge, br0
        |  198.18.0.0/24, 2001:2::c612:0/120   node i has 198.18.0.i and 2001:2::c612:i on ul0, and
        |                                   routes to each other node's pods (IPv4 /24, IPv6 /120)
    node ns (the host itself for "local")   blackhole 198.19.0.0/16 and 2001:2:0:ffff::/64 (services)
        |  gw<hash>  198.18.i.1/32          routes 198.18.i.N/32 and its IPv6 /128 to each pod
        |            fe80::1/64             (simulated nodes forward IPv4 and IPv6 between pods)
    pod ns                                  eth0 198.18.i.N/32 and 2001:2::c612:iN/128 (nodad),
                                            lo up with ::1 and ::6 (INBOUND_SOURCE6);
                                            routes only inside 198.18.0.0/15 and 2001:2::/48

Pods are dual-stack when the kernel has IPv6 (/proc/sys/net/ipv6): a pod's IPv6 address is
POD_RANGE6's prefix followed by its IPv4 address (pod_ip6), kept in its record as ip6 ("" for
pods made before, or without IPv6). IPv6 forwarding is turned on only inside simulated nodes'
namespaces, never on the host.

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
from dataplane.settings import (INBOUND_SOURCE6, LOCAL_NODE, MESH_RANGE, MESH_RANGE6, POD_RANGE6, SERVICE_RANGE,
                                SERVICE_RANGE6, UNDERLAY)

GATEWAY6 = "fe80::1"  # the node side of every pod's veth: the pod's IPv6 gateway


def ipv6_available() -> bool:
    """Whether the kernel has IPv6 at all (not booted with ipv6.disable=1)."""
    return os.path.isdir("/proc/sys/net/ipv6")


def pod_cidr6(node: dict) -> str:
    """A node's IPv6 pod range: the one its IPv4 pod_cidr maps to (198.18.1.0/24 -> 2001:2::c612:100/120)."""
    net = ipaddress.IPv4Network(node["pod_cidr"])
    return str(ipaddress.IPv6Network((POD_RANGE6.network_address + int(net.network_address),
                                      128 - (32 - net.prefixlen))))


def _underlay6(node: dict) -> str:
    """A simulated node's IPv6 address on the underlay, the one its IPv4 address maps to (as
    pods' do): its forwarder dials IPv6 endpoints outside pods from it."""
    return pod_ip6(node["ip"])


def pod_ip6(ip: str) -> str:
    """A pod's IPv6 address: POD_RANGE6's prefix + its IPv4 address (198.18.1.5 -> 2001:2::c612:105)."""
    return str(POD_RANGE6.network_address + int(ipaddress.IPv4Address(ip)))


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
        _blackholes(nl, replace=True)


def _blackholes(nl, replace: bool = False) -> None:
    nl.add_blackhole(str(SERVICE_RANGE), replace=replace)
    if ipv6_available():
        nl.add_blackhole(str(SERVICE_RANGE6), replace=replace)


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
            _blackholes(node)
            netns.sysctl("net.ipv4.ip_forward", "1", netns=ns)
            six = ipv6_available()
            if six:
                _enable_ipv6(ns, "lo", "ul0")
                netns.sysctl("net.ipv6.conf.all.forwarding", "1", netns=ns)
                node.add_address("ul0", f"{_underlay6(rec)}/{128 - (32 - UNDERLAY.prefixlen)}")
            for peer in peers:
                node.add_route(peer["pod_cidr"], via=peer["ip"])
                with netlink.opened(peer["netns"]) as other:
                    other.add_route(rec["pod_cidr"], via=rec["ip"])
                    undo.push(netlink.delete_route, peer["netns"], rec["pod_cidr"])
                    if six:
                        node.add_route(pod_cidr6(peer), via=_underlay6(peer))
                        other.add_route(pod_cidr6(rec), via=_underlay6(rec))
                        undo.push(netlink.delete_route, peer["netns"], pod_cidr6(rec))
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
        if ipv6_available():
            netlink.delete_route(None, str(SERVICE_RANGE6), blackhole=True)
        return
    for peer in doc["nodes"].values():
        if peer.get("netns"):
            netlink.delete_route(peer["netns"], rec["pod_cidr"])
            netlink.delete_route(peer["netns"], pod_cidr6(rec))
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
    addr6 = pod_ip6(addr) if ipv6_available() else ""
    rec = {"node": node_name, "ip": addr, "ip6": addr6, "labels": labels or {}, "fail_mode": fail_mode,
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
            _blackholes(host, replace=True)
        if addr6:
            _pod_ipv6(rec, node_ns, addr6, undo)
    doc["pods"][name] = rec
    return rec


def _enable_ipv6(ns: str, *ifnames: str) -> None:
    """IPv6 on in namespace ns: for links made from now on, and for ifnames (lo is one)."""
    for conf in ("all", "default", *ifnames):
        netns.sysctl(f"net.ipv6.conf.{conf}.disable_ipv6", "0", netns=ns)


def _pod_ipv6(rec: dict, node_ns: str, addr6: str, undo: Undo) -> None:
    """The IPv6 half of a pod's plumbing, once its veth is up: addresses on both ends,
    ::6 on lo, the pod's route to MESH_RANGE6 via fe80::1 and the node's /128 to the pod.
    On the host (node_ns None) only the veth's own IPv6 is turned on."""
    pod_ns, pod_if, host_if = rec["netns"], rec["pod_if"], rec["host_if"]
    if node_ns:
        _enable_ipv6(node_ns, host_if)
    else:
        netns.sysctl(f"net.ipv6.conf.{host_if}.disable_ipv6", "0")
    _enable_ipv6(pod_ns, "lo", pod_if)
    with netlink.opened(node_ns) as host, netlink.opened(pod_ns) as pod:
        pod.add_address("lo", f"{INBOUND_SOURCE6}/128")
        undo.push(_delete_address, pod_ns, "lo", f"{INBOUND_SOURCE6}/128")
        pod.add_address(pod_if, f"{addr6}/128")
        host.add_address(host_if, f"{GATEWAY6}/64")
        pod.add_route(str(MESH_RANGE6), via=GATEWAY6, dev=pod_if, src=addr6)
        host.add_route(addr6, dev=host_if)


def _delete_address(ns: str, ifname: str, cidr: str) -> None:
    try:
        with netlink.opened(ns) as nl:
            nl.delete_address(ifname, cidr, check=False)
    except GlasswingError:
        pass


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
    if rec.get("ip6") and not rec["netns_owned"]:  # a namespace the pod came with keeps lo
        _delete_address(rec["netns"], "lo", f"{INBOUND_SOURCE6}/128")
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
