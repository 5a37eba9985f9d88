"""Dual-stack pods and IPv6 services, the parts that need no native IPv6 capture: every pod
gets its IPv6 address (2001:2:: + its IPv4 one), pods on one simulated node reach each other
over IPv6 directly, the IPv6 service range is blackholed, the mesh resolver answers AAAA with
a service's IPv6 VIP (over the IPv4 resolver path), and a dual-stack service whose only
endpoint is a static IPv6 address (an app listening on its IPv6 address alone) is reached
through its IPv4 VIP, on one node and across two: the forwarder dials IPv6.

The forwarder's paths need the maps to hold IPv6 VIPs (map_sync of branch v6-kernel), and an
app dialling an IPv6 VIP needs native connect6 (v6-kernel too): with both, a pod endpoint
picked for an IPv6 VIP is dialled at its IPv6 address, across nodes as the tunnel's target.

    n1: client, web1 (peers.py echo on its IPv6 address only, 7600)     n2: web2 (the same)
    services (applied): six-near 7600 -> web1's IPv6 address, six-far 7600 -> web2's,
                        only6 (IPv6 only) 7600 -> web1's IPv6 address
    services (service add): pod-near 7600 -> web1, pod-far 7600 -> web2
"""
import ipaddress
import json
import subprocess
import sys

import pytest

from dataplane.settings import MESH_RANGE6, POD_RANGE6, SERVICE_RANGE6
from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import PEERS, client, client_and_two_webs, glasswing, wait_listening, wait_synced

PORT = 7600
ZONE = "default.svc.glasswing"


def _service(name, address6, families=None):
    spec = {"ports": [{"port": PORT}], "endpoints": [{"address6": address6}]}
    if families:
        spec["ipFamilies"] = families
    return {"apiVersion": "glasswing.dev/v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def lab(kernel_before):
    lab = Lab("gwsix")
    try:
        client_and_two_webs(lab)
        lab.service("pod-near", ports=[str(PORT)], endpoints=["web1"])
        lab.service("pod-far", ports=[str(PORT)], endpoints=["web2"])
        lab.up("n1")
        lab.up("n2")
        doc = lab.doc
        lab.ip6 = {n: p["ip6"] for n, p in doc["pods"].items()}
        for pod in ("web1", "web2"):
            lab.spawn(pod, [sys.executable, PEERS, "echo", pod, str(PORT), lab.ip6[pod]])  # IPv6 only
            wait_listening(lab, pod, lab.ip6[pod], PORT)
        docs = [_service("six-near", lab.ip6["web1"]), _service("six-far", lab.ip6["web2"]),
                _service("only6", lab.ip6["web1"], ["IPv6"])]
        glasswing(lab, "apply", "-f", "-", stdin=json.dumps(docs))
        wait_synced(lab)
        lab.svc = {s["name"]: s for s in lab.doc["services"].values()}
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())


def _ip_json(lab, pod, *args):
    r = lab.run(pod, ["ip", "-j", "-6", *args], timeout=10)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _node_ip_json(lab, node, *args):
    r = subprocess.run(["ip", "-n", lab.doc["nodes"][node]["netns"], "-j", "-6", *args],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("pod", ["client", "web1", "web2"])
def test_every_pod_has_its_ipv6_address_lo_and_routes_only_inside_the_mesh(lab, pod):
    rec = lab.doc["pods"][pod]
    assert ipaddress.IPv6Address(rec["ip6"]) == POD_RANGE6.network_address + int(ipaddress.IPv4Address(rec["ip"]))
    addrs = {(a["ifname"], i["local"], i["prefixlen"]) for a in _ip_json(lab, pod, "addr") for i in a["addr_info"]
             if i.get("scope") != "link"}
    assert addrs == {("lo", "::1", 128), ("lo", "::6", 128), ("eth0", rec["ip6"], 128)}
    eth0 = [i for a in _ip_json(lab, pod, "addr", "show", "eth0") for i in a["addr_info"] if i["local"] == rec["ip6"]]
    assert eth0[0].get("nodad") is True and not eth0[0].get("tentative")
    dsts = {r["dst"] for r in _ip_json(lab, pod, "route") if r.get("type", "unicast") == "unicast"}
    routed = {d for d in dsts if not d.startswith("fe80") and d not in ("::1", "::6", rec["ip6"])}
    assert routed == {str(MESH_RANGE6)}


def test_pods_reach_each_other_over_ipv6_on_one_node(lab):
    r = client(lab, lab.ip6["web1"], PORT, size=100_003)
    assert r.get("error") is None, r
    assert r["greeting"] == ["web1", lab.ip6["client"]]  # direct: web1 sees the client's own address
    assert r["received"] == r["sent"] == 100_003 and r["same"]


@pytest.mark.parametrize("node", ["n1", "n2"])
def test_the_ipv6_service_range_is_blackholed(lab, node):
    routes = _node_ip_json(lab, node, "route")
    assert {"dst": str(SERVICE_RANGE6), "type": "blackhole"}.items() <= \
        next(r for r in routes if r["dst"] == str(SERVICE_RANGE6)).items()
    forwarding = subprocess.run(["ip", "netns", "exec", lab.doc["nodes"][node]["netns"], "sysctl", "-n",
                                 "net.ipv6.conf.all.forwarding"], capture_output=True, text=True)
    assert forwarding.stdout.strip() == "1"


def test_services_have_both_vips_or_the_ipv6_one_only(lab):
    near, only6 = lab.svc["six-near"], lab.svc["only6"]
    assert near["ip_families"] == ["IPv4", "IPv6"]
    assert near["vip6"] == str(SERVICE_RANGE6.network_address + int(ipaddress.IPv4Address(near["vip"])))
    assert (only6["vip"], only6["ip_families"]) == ("", ["IPv6"])
    assert ipaddress.IPv6Address(only6["vip6"]) in SERVICE_RANGE6
    listed = glasswing(lab, "service", "list")
    assert near["vip6"] in listed and only6["vip6"] in listed


@pytest.mark.parametrize("name", ["six-near", f"six-near.{ZONE}"])
def test_getent_ahostsv6_gives_the_ipv6_vip(lab, name):
    r = lab.run("client", ["getent", "ahostsv6", name], timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == lab.svc["six-near"]["vip6"]


AAAA_QUERY = """
import json, socket, struct, sys
name, qtype = sys.argv[1], int(sys.argv[2])
q = struct.pack("!HHHHHH", 0x2828, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0" + struct.pack("!HH", qtype, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, ("198.18.250.53", 53))  # any nameserver: port 53 from a pod goes to the forwarder
data = s.recv(2048)
_id, flags, _qd, ancount = struct.unpack_from("!HHHH", data)
last = socket.inet_ntop(socket.AF_INET6, data[-16:]) if qtype == 28 and ancount else None
print(json.dumps({"rcode": flags & 15, "answers": ancount, "last": last}))
"""


@pytest.mark.parametrize("name, qtype, want", [
    (f"six-near.{ZONE}", 28, "six-near"),   # AAAA: the IPv6 VIP
    ("only6.default", 28, "only6"),
    (f"only6.{ZONE}", 1, None),             # A for an IPv6-only service: NODATA
])
def test_raw_aaaa_query_over_ipv4(lab, name, qtype, want):
    r = lab.run("client", [sys.executable, "-c", AAAA_QUERY, name, str(qtype)], timeout=10)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    if want is None:
        assert out == {"rcode": 0, "answers": 0, "last": None}
    else:
        assert out == {"rcode": 0, "answers": 1, "last": lab.svc[want]["vip6"]}


@pytest.mark.parametrize("svc, server, node", [("six-near", "web1", "n1"), ("six-far", "web2", "n1")])
def test_ipv4_vip_reaches_a_static_ipv6_endpoint(lab, svc, server, node):
    """The app listens on its IPv6 address only: the forwarder on the client's node dials it
    over IPv6 from its node address (2001:2:: + the node's underlay IPv4 address)."""
    r = client(lab, lab.svc[svc]["vip"], PORT, size=1_000_003)
    assert r.get("error") is None, r
    assert r["peername"][:2] == [lab.svc[svc]["vip"], PORT]
    node_ip6 = str(POD_RANGE6.network_address + int(ipaddress.IPv4Address(lab.doc["nodes"][node]["ip"])))
    assert r["greeting"] == [server, node_ip6]
    assert r["received"] == r["sent"] == 1_000_003 and r["same"]


@pytest.mark.parametrize("svc, server", [("pod-near", "web1"), ("pod-far", "web2")])
def test_ipv6_vip_reaches_the_pod_at_its_ipv6_address(lab, svc, server):
    """An app dials the IPv6 VIP: the pod endpoint is dialled at its IPv6 address, from ::6
    inside its pod; on another node the tunnel carries that IPv6 target."""
    vip6 = lab.svc[svc]["vip6"]
    r = client(lab, vip6, PORT, size=1_000_003)
    assert r.get("error") is None, r
    assert r["peername"][:2] == [vip6, PORT]
    assert r["greeting"] == [server, "::6"]
    assert r["received"] == r["sent"] == 1_000_003 and r["same"]
