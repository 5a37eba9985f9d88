"""An app's AF_INET6 socket dialling a service's IPv6 VIP natively goes through the mesh
as the IPv4 VIP does, on one node: connect6 sends it to the forwarder's [::1]:15001
listener, the forwarder reads IP6T_SO_ORIGINAL_DST, finds the service by its IPv6 VIP and
relays to the endpoint; the app sees the IPv6 VIP as its peer. Socket LB translates a
native connect in the kernel, a DNS query to a native IPv6 nameserver is answered by the
mesh resolver's [::1]:15053 socket, from the server asked, and with the forwarder killed a
native connect fails open to the endpoint.

tests/integration/test_native_v6.py covers the same and more once pods and services are
dual-stack (their IPv6 addresses and VIPs allocated by the store); this one needs only the
capture side.

The VIPs are given in the store (spec.vip6 of the contract), endpoints are the pods' IPv4
addresses, which an IPv6 VIP's backends hold mapped (kernel/map_sync.reachable).

    n1: client, web1 (peers.py serve)
    services: near 7000 -> web1, socklb 7000 -> web1 (picked in connect6)
"""
import json
import sys

import pytest

from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import client, kill_forwarder, start_peers

VIP6 = {"near": "2001:2:0:ffff::7", "socklb": "2001:2:0:ffff::8"}
ZONE = "default.svc.glasswing"


@pytest.fixture(scope="module")
def lab(kernel_before):
    lab = Lab("gwnative6")
    try:
        lab.node("n1")
        lab.pod("client", "n1")
        lab.pod("web1", "n1")
        lab.service("near", ports=["7000"], endpoints=["web1"])
        lab.service("socklb", ports=["7000"], endpoints=["web1"], socket_lb=True)
        ctl = lab.ctl()

        def give_vip6(doc):
            for name, vip6 in VIP6.items():
                doc["services"][f"default/{name}"]["vip6"] = vip6
        ctl.store.update(give_vip6)
        lab.up("n1")
        start_peers(lab, ("web1",), "client")
        doc = lab.doc
        lab.vips = {s["name"]: s["vip"] for s in doc["services"].values()}
        lab.ips = {n: p["ip"] for n, p in doc["pods"].items()}
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())


def test_af_inet6_socket_to_an_ipv6_vip_goes_through_the_forwarder(lab):
    before = lab.ctl("n1").status()["stats"]["accepted"]
    r = client(lab, VIP6["near"], 7000, size=1_000_003)
    assert r.get("error") is None, r
    assert r["peername"][:2] == [VIP6["near"], 7000]   # getpeername6: the IPv6 VIP
    assert r["greeting"] == ["web1", "127.0.0.6"]        # through the forwarder
    assert r["received"] == r["sent"] == 1_000_003 and r["same"]
    assert lab.ctl("n1").status()["stats"]["accepted"] == before + 1


def test_socket_lb_translates_a_native_connect_in_the_kernel(lab):
    before = lab.ctl("n1").status()["stats"]["accepted"]
    r = client(lab, VIP6["socklb"], 7000, size=1000)
    assert r.get("error") is None and r["same"], r
    assert r["peername"][:2] == [VIP6["socklb"], 7000]
    assert r["greeting"] == ["web1", lab.ips["client"]]  # straight to web1's mapped address
    assert lab.ctl("n1").status()["stats"]["accepted"] == before


DNS6_QUERY = """
import json, socket, struct, sys
name, server = sys.argv[1], (sys.argv[2], 53)
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, server)
data, src = s.recvfrom(2048)
ident, flags, _qd, ancount = struct.unpack_from("!HHHH", data)
print(json.dumps({"id": ident, "rcode": flags & 15, "answers": ancount,
                  "last_a": socket.inet_ntoa(data[-4:]), "src": list(src)[:2]}))
"""


def test_dns_to_a_native_ipv6_nameserver_answered_by_the_mesh_resolver(lab):
    server = "2001:db8::53"  # any nameserver: port 53 from a pod goes to the forwarder
    r = lab.run("client", [sys.executable, "-c", DNS6_QUERY, f"near.{ZONE}", server])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"id": 0x1234, "rcode": 0, "answers": 1, "last_a": lab.vips["near"], "src": [server, 53]}


def test_killed_forwarder_fails_open_for_native_ipv6(lab):
    """Last: it kills n1's forwarder. With none listening on [::1]:15001, connect6 picks the
    endpoint itself (web1's mapped IPv4 address)."""
    kill_forwarder(lab, "n1")
    try:
        r = client(lab, VIP6["near"], 7000, size=100)
        assert r.get("error") is None and r["same"], r
        assert r["peername"][:2] == [VIP6["near"], 7000]         # the app still sees the VIP
        assert r["greeting"] == ["web1", lab.ips["client"]]    # straight there
    finally:
        lab.ctl("n1").up()
