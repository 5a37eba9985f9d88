"""Apps that dial IPv4 through AF_INET6 sockets (::ffff:a.b.c.d) go through the mesh as
IPv4 apps do, on one node and across two: a plain AF_INET6 socket to a mapped VIP, a Java
client (the JVM's sockets are dual-stack) calling an HTTP service by name, and grpcio (gRPC
C-core) unary and streaming calls by name. Socket load balancing holds for mapped connects,
DNS over an AF_INET6 socket is answered by the mesh resolver, and `glasswing doctor` reports
IPv6 and every hook attachment of the forwarder and its pods.

    n1: client, web1 (peers.py serve, grpc_peers.py serve 9100)     n2: web2 (the same)
    services: web-near 80->8080 web1, web-far 80->8080 web2, near/far 7000, socklb 7000
              (web1, web2, picked in connect6), grpc-near/grpc-far 9100/tcp (IPv4 only)
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from dataplane.kernel.programs import attached
from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import client, client_and_two_webs, start_peers, wait_listening

SUPPORT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support")
GRPC_PEERS = os.path.join(SUPPORT, "grpc_peers.py")
HTTP_GET = os.path.join(SUPPORT, "java", "HttpGet.java")
ZONE = "default.svc.glasswing"


@pytest.fixture(scope="module")
def lab(kernel_before):
    lab = Lab("gwmapped")
    try:
        client_and_two_webs(lab)
        lab.service("web-near", ports=["80:8080"], endpoints=["web1"])
        lab.service("web-far", ports=["80:8080"], endpoints=["web2"])
        lab.service("near", ports=["7000"], endpoints=["web1"])
        lab.service("far", ports=["7000"], endpoints=["web2"])
        lab.service("socklb", ports=["7000"], endpoints=["web1", "web2"], socket_lb=True)
        # IPv4 only: with an AAAA answer gRPC dials the IPv6 VIP natively (test_ipv6's business)
        lab.service("grpc-near", ports=["9100/tcp"], endpoints=["web1"], ip_family="ipv4")
        lab.service("grpc-far", ports=["9100/tcp"], endpoints=["web2"], ip_family="ipv4")
        lab.up("n1")
        lab.up("n2")
        start_peers(lab, ("web1", "web2"), "client")
        doc = lab.doc
        for pod in ("web1", "web2"):
            lab.spawn(pod, [sys.executable, GRPC_PEERS, "serve", pod, "9100"])
            wait_listening(lab, "client", doc["pods"][pod]["ip"], 9100)
        lab.vips = {s["name"]: s["vip"] for s in doc["services"].values()}
        lab.ips = {n: p["ip"] for n, p in doc["pods"].items()}
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())


@pytest.mark.parametrize("svc,server", [("near", "web1"), ("far", "web2")])
def test_af_inet6_socket_to_a_mapped_vip(lab, svc, server):
    mapped = "::ffff:" + lab.vips[svc]
    r = client(lab, mapped, 7000, size=1_000_003)  # create_connection: an AF_INET6 socket
    assert r.get("error") is None, r
    assert r["peername"][:2] == [mapped, 7000]           # getpeername6: the mapped VIP
    assert r["greeting"] == [server, "127.0.0.6"]         # through the forwarder(s)
    assert r["received"] == r["sent"] == 1_000_003 and r["same"]


def test_mapped_socket_lb_picks_endpoints_in_the_kernel(lab):
    mapped, seen = "::ffff:" + lab.vips["socklb"], set()
    before = lab.ctl("n1").status()["stats"]["accepted"]
    for _ in range(12):
        r = client(lab, mapped, 7000, size=1000)
        assert r.get("error") is None and r["same"], r
        assert r["peername"][:2] == [mapped, 7000]
        assert r["greeting"][1] == lab.ips["client"]  # no forwarder on the path
        seen.add(r["greeting"][0])
    assert seen == {"web1", "web2"}
    assert lab.ctl("n1").status()["stats"]["accepted"] == before


def _java(lab, url):
    java = shutil.which("java")
    if java is None:
        pytest.skip("needs java (default-jre-headless)")
    # The first start compiles HttpGet.java and warms the JVM's class data: minutes on a busy VM.
    r = lab.run("client", [java, HTTP_GET, url], timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("svc,server", [("web-near", "web1"), ("web-far", "web2")])
def test_java_calls_an_http_service_by_name(lab, svc, server):
    out = _java(lab, f"http://{svc}.{ZONE}/")
    assert out == {"status": 200, "body": {"pod": server, "peer": "127.0.0.6"}}


@pytest.mark.parametrize("svc,server", [("grpc-near", "web1"), ("grpc-far", "web2")])
def test_grpcio_unary_and_streaming_by_name(lab, svc, server):
    r = lab.run("client", [sys.executable, GRPC_PEERS, "client", f"dns:///{svc}.{ZONE}:9100"], timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["unary"][0] == server and out["unary"][1].startswith("ipv4:127.0.0.6:"), out
    assert out["unary"][2] == "ping" and out["big_same"]
    assert out["stream"] == [f"{server} a", f"{server} bb", f"{server} ccc"]


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


def test_dns_over_an_af_inet6_socket_answered_by_the_mesh_resolver(lab):
    server = "::ffff:198.18.250.53"  # any nameserver: port 53 from a pod goes to the forwarder
    r = lab.run("client", [sys.executable, "-c", DNS6_QUERY, f"far.{ZONE}", server])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"id": 0x1234, "rcode": 0, "answers": 1, "last_a": lab.vips["far"], "src": [server, 53]}


def _doctor(lab, node):
    r = subprocess.run([sys.executable, "-m", "glasswing", "--node", node, "doctor", "--json"],
                       env=lab.env, capture_output=True, text=True, timeout=60)
    assert r.stdout, r.stderr
    return {c["check"]: c for c in json.loads(r.stdout)}


def test_doctor_says_ipv6_and_which_hooks_are_attached(lab):
    checks = _doctor(lab, "n1")
    assert checks["ipv6"]["detail"].startswith("enabled; AF_INET6 sockets can be made")
    hooks = {k: v for k, v in checks.items() if k.startswith("hooks on ")}
    assert set(hooks) == {"hooks on forwarder", "hooks on pod client", "hooks on pod web1"}
    assert all(v["ok"] and v["detail"] == "all attached" for v in hooks.values()), hooks
    # Take connect6 off web1's cgroup (web1 only serves): doctor names it, and fails.
    cgroup = lab.doc["pods"]["web1"]["cgroup"]
    (prog,) = [i for i, t, n in attached(cgroup) if n == "gw_connect6"]
    subprocess.run(["bpftool", "cgroup", "detach", cgroup, "cgroup_inet6_connect", "id", str(prog)], check=True)
    checks = _doctor(lab, "n1")
    assert checks["hooks on pod web1"] == {"check": "hooks on pod web1", "ok": False, "detail": "missing: connect6"}
    assert checks["hooks on pod client"]["ok"]
