"""Apps on native IPv6 go through the mesh as IPv4 apps do, on one node and across two: an
AF_INET6 socket to a service's IPv6 VIP connects, sees that VIP as its peer and reaches the
endpoint; an IPv6-only service (no IPv4 VIP, endpoints listening on IPv6 only) is reached by
name; an app that asks for AAAA first (getaddrinfo AF_INET6, Java with
preferIPv6Addresses) reaches a dual-stack service; grpcio unary and streaming calls to an IPv6
VIP go through; socket load balancing and fail-open hold
for native IPv6 connects; DNS to an IPv6 nameserver is answered by the mesh resolver.

    n1: client, web1 (peers.py serve: IPv4 only; grpc_peers.py serve 9100; echo on 7001,
        IPv6 only)                                                           n2: web2 (the same)
    services: near/far 7000 (web1 / web2), web-near/web-far 80->8080, socklb 7000 (web1, web2,
              picked in connect6), only6 7001 (IPv6 only; web1, web2), grpc-near/grpc-far 9100/tcp
"""
import json
import os
import shutil
import socket
import sys

import pytest

from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import PEERS, client, client_and_two_webs, kill_forwarder, start_peers, wait_listening

ZONE = "default.svc.glasswing"
HTTP_GET = os.path.join(os.path.dirname(PEERS), "java", "HttpGet.java")
GRPC_PEERS = os.path.join(os.path.dirname(PEERS), "grpc_peers.py")


@pytest.fixture(scope="module")
def lab(kernel_before):
    lab = Lab("gwv6")
    try:
        client_and_two_webs(lab)
        lab.service("near", ports=["7000"], endpoints=["web1"])
        lab.service("far", ports=["7000"], endpoints=["web2"])
        lab.service("web-near", ports=["80:8080"], endpoints=["web1"])
        lab.service("web-far", ports=["80:8080"], endpoints=["web2"])
        lab.service("socklb", ports=["7000"], endpoints=["web1", "web2"], socket_lb=True)
        lab.service("only6", ports=["7001"], endpoints=["web1", "web2"], ip_family="ipv6")
        lab.service("grpc-near", ports=["9100/tcp"], endpoints=["web1"])
        lab.service("grpc-far", ports=["9100/tcp"], endpoints=["web2"])
        lab.up("n1")
        lab.up("n2")
        start_peers(lab, ("web1", "web2"), "client")
        doc = lab.doc
        for pod in ("web1", "web2"):
            ip6 = doc["pods"][pod]["ip6"]
            lab.spawn(pod, [sys.executable, PEERS, "echo", pod, "7001", ip6])
            wait_listening(lab, pod, ip6, 7001)
            lab.spawn(pod, [sys.executable, GRPC_PEERS, "serve", pod, "9100"])
            wait_listening(lab, pod, doc["pods"][pod]["ip"], 9100)
        lab.vips = {s["name"]: s["vip"] for s in doc["services"].values()}
        lab.vips6 = {s["name"]: s["vip6"] for s in doc["services"].values()}
        lab.ips6 = {n: p["ip6"] for n, p in doc["pods"].items()}
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())


def test_services_are_dual_stack_by_default_and_only6_has_no_ipv4_vip(lab):
    assert all(lab.vips6[s] for s in ("near", "far", "socklb", "only6"))
    assert lab.vips["near"] and not lab.vips["only6"]
    assert all(socket.inet_pton(socket.AF_INET6, ip) for ip in lab.ips6.values())


@pytest.mark.parametrize("svc,server", [("near", "web1"), ("far", "web2")])
def test_af_inet6_socket_to_an_ipv6_vip(lab, svc, server):
    vip6 = lab.vips6[svc]
    before = lab.ctl("n1").status()["stats"]["accepted"]
    r = client(lab, vip6, 7000, size=1_000_003)
    assert r.get("error") is None, r
    assert r["peername"][:2] == [vip6, 7000]               # getpeername6: the IPv6 VIP
    # through the forwarder(s): peers.py serves IPv4 only, so the pod's IPv6 address refused
    # and the forwarder tried its IPv4 one
    assert r["greeting"] == [server, "127.0.0.6"]
    assert r["received"] == r["sent"] == 1_000_003 and r["same"]
    assert lab.ctl("n1").status()["stats"]["accepted"] == before + 1


@pytest.mark.parametrize("server", ["web1", "web2"])
def test_ipv6_only_service_by_name(lab, server):
    seen = set()
    for _ in range(8):
        r = client(lab, f"only6.{ZONE}", 7001, size=10_000)
        assert r.get("error") is None and r["same"], r
        assert r["peername"][:2] == [lab.vips6["only6"], 7001]
        assert r["greeting"][1] == "::6"  # the app listens on IPv6 only: reached over IPv6
        seen.add(r["greeting"][0])
    assert server in seen


AAAA_FIRST = """
import json, socket, sys
(fam, _t, _p, _c, addr), *_ = socket.getaddrinfo(sys.argv[1], int(sys.argv[2]), socket.AF_INET6,
                                                 socket.SOCK_STREAM)
s = socket.create_connection(addr[:2], 5)
print(json.dumps({"addr": addr[0], "peer": list(s.getpeername())[:2], "greeting": s.recv(200).decode().split()}))
"""


def test_app_asking_for_aaaa_first_reaches_a_dual_stack_service(lab):
    r = lab.run("client", [sys.executable, "-c", AAAA_FIRST, f"far.{ZONE}", "7000"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["addr"] == lab.vips6["far"] and out["peer"] == [lab.vips6["far"], 7000]
    assert out["greeting"][0] == "web2"


def test_java_preferring_ipv6_calls_by_name(lab):
    java = shutil.which("java")
    if java is None:
        pytest.skip("needs java (default-jre-headless)")
    r = lab.run("client", [java, "-Djava.net.preferIPv6Addresses=true", HTTP_GET, f"http://web-far.{ZONE}/"],
                timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["body"]["pod"] == "web2"


@pytest.mark.parametrize("svc,server", [("grpc-near", "web1"), ("grpc-far", "web2")])
def test_grpcio_unary_and_streaming_to_an_ipv6_vip(lab, svc, server):
    r = lab.run("client", [sys.executable, GRPC_PEERS, "client", f"ipv6:[{lab.vips6[svc]}]:9100"], timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    # through the forwarder(s): the server sees the mesh's source of the family it was dialled on
    assert out["unary"][0] == server and out["unary"][1].startswith(("ipv6:%5B::6%5D:", "ipv4:127.0.0.6:")), out
    assert out["unary"][2] == "ping" and out["big_same"]
    assert out["stream"] == [f"{server} a", f"{server} bb", f"{server} ccc"]


def test_native_ipv6_socket_lb_picks_endpoints_in_the_kernel(lab):
    vip6, seen = lab.vips6["socklb"], set()
    before = lab.ctl("n1").status()["stats"]["accepted"]
    for _ in range(12):
        r = client(lab, vip6, 7000, size=1000)
        assert r.get("error") is None and r["same"], r
        assert r["peername"][:2] == [vip6, 7000]
        assert r["greeting"][1] in (lab.doc["pods"]["client"]["ip"], lab.ips6["client"])  # no forwarder
        seen.add(r["greeting"][0])
    assert seen == {"web1", "web2"}
    assert lab.ctl("n1").status()["stats"]["accepted"] == before


DNS6_QUERY = """
import json, socket, struct, sys
name, server, qtype = sys.argv[1], (sys.argv[2], 53), int(sys.argv[3])
q = struct.pack("!HHHHHH", 0x4321, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0" + struct.pack("!HH", qtype, 1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, server)
data, src = s.recvfrom(2048)
ident, flags, _qd, ancount = struct.unpack_from("!HHHH", data)
last = socket.inet_ntop(socket.AF_INET6, data[-16:]) if qtype == 28 else socket.inet_ntoa(data[-4:])
print(json.dumps({"id": ident, "rcode": flags & 15, "answers": ancount, "last": last, "src": list(src)[:2]}))
"""


@pytest.mark.parametrize("qtype", [28, 1], ids=["AAAA", "A"])
def test_dns_to_an_ipv6_nameserver_answered_by_the_mesh_resolver(lab, qtype):
    server = "2001:2:0:53::53"  # any nameserver: port 53 from a pod goes to the forwarder
    r = lab.run("client", [sys.executable, "-c", DNS6_QUERY, f"far.{ZONE}", server, str(qtype)])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    want = lab.vips6["far"] if qtype == 28 else lab.vips["far"]
    assert out == {"id": 0x4321, "rcode": 0, "answers": 1, "last": want, "src": [server, 53]}


def test_killed_forwarder_fails_open_for_native_ipv6(lab):
    """Last: it kills n1's forwarder. With none, connect6 picks the endpoint itself."""
    vip6 = lab.vips6["near"]
    kill_forwarder(lab, "n1")
    try:
        for _ in range(3):
            r = client(lab, vip6, 7000, size=100)
            assert r.get("error") is None and r["same"], r
            assert r["peername"][:2] == [vip6, 7000]       # the app still sees the VIP
            assert r["greeting"][0] == "web1"
            assert r["greeting"][1] in (lab.doc["pods"]["client"]["ip"], lab.ips6["client"])  # straight there
    finally:
        lab.ctl("n1").up()
