"""The registry at work on the embedded store: names resolve through the
forwarder's DNS, config changes reach forwarders within a second without
disturbing streams in flight, health checks take endpoints out and back,
and a dead node's endpoints leave with its lease."""
import json
import os
import subprocess
import sys
import time

import pytest

from lab.cluster import Lab
from dataplane.settings import LEASE_TTL
from tests.support import leaks
from tests.support.mesh import GLASSWING, PEERS, client, client_and_two_webs, start_peers
from tests.support.wait import wait_until


@pytest.fixture(scope="module")
def reg(kernel_before):
    lab = Lab("gwreg")
    try:
        client_and_two_webs(lab, web_labels={"app": "web"})
        lab.pod("spare", "n1", labels={"app": "spare"})
        lab.service("web", ports=["80:8080", "7000"], selector={"app": "web"})
        lab.service("moving", ports=["7000"], endpoints=["web1"])
        lab.service("iperf", ports=["5201"], endpoints=["web2"])
        lab.up("n1")
        lab.up("n2")
        start_peers(lab, ("web1", "web2"), "client", iperf=True)
        lab.vips = {s["name"]: s["vip"] for s in lab.doc["services"].values()}
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())


def apply(lab, text):
    r = subprocess.run([GLASSWING, "apply", "-f", "-"], input=text, env=lab.env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def resolve(lab, name, how="hosts"):
    r = lab.run("client", ["getent", how, name], timeout=10)
    return r.returncode, r.stdout.split()[:1]


def test_service_names_resolve_through_the_forwarder(reg):
    vip = reg.vips["web"]
    vip6 = reg.doc["services"]["default/web"]["vip6"]
    for name in ("web", "web.default", "web.default.svc.glasswing"):
        assert resolve(reg, name) == (0, [vip6])  # getent hosts asks AAAA first: services are dual-stack
        assert resolve(reg, name, "ahostsv4") == (0, [vip])
    assert resolve(reg, "nope.default.svc.glasswing")[0] == 2  # NXDOMAIN
    t = time.monotonic()
    assert resolve(reg, "example.org")[0] != 0  # not in the mesh, no upstream: REFUSED at once
    assert time.monotonic() - t < 3
    r = reg.run("client", ["curl", "-sS", "-m", "5", "http://web/"])
    assert r.returncode == 0 and json.loads(r.stdout)["pod"] in ("web1", "web2"), r.stderr


def test_changed_endpoints_move_new_connections_within_a_second_streams_go_on(reg):
    iperf = reg.spawn("client", ["iperf3", "-J", "-c", reg.vips["iperf"], "-t", "6"], stdout=subprocess.PIPE)
    time.sleep(1.5)  # the input: a stream well under way when the endpoints change
    assert client(reg, reg.vips["moving"], 7000)["greeting"][0] == "web1"
    t0 = time.monotonic()
    apply(reg, "apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {name: moving}\n"
               f"spec:\n  vip: {reg.vips['moving']}\n  ports: [{{port: 7000}}]\n  endpoints: [{{pod: web2}}]\n")
    while client(reg, reg.vips["moving"], 7000)["greeting"][0] != "web2":
        assert time.monotonic() - t0 < 1.0, "new connections still reach web1 after a second"
    elapsed = time.monotonic() - t0
    out, _ = iperf.communicate(timeout=30)
    assert iperf.returncode == 0, out[-300:]
    end = json.loads(out)["end"]
    assert end["sum_received"]["bytes"] > 0 and "error" not in json.loads(out)
    print(f"endpoint change reached new connections in {elapsed * 1000:.0f} ms")


def test_health_checks_take_an_endpoint_out_and_back(reg):
    apply(reg, "apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {name: checked}\n"
               "spec:\n  ports: [{port: 7000}]\n  selector: {app: spare}\n"
               "  healthCheck: {type: tcp, intervalMs: 200, timeoutMs: 100, unhealthyThreshold: 2}\n")

    def health():
        eps = [e for e in reg.doc["endpoints"].values() if e["service"] == "default/checked"]
        return [e["health"] for e in eps]

    wait_until(lambda: health() == ["unhealthy"], 5, "the endpoint marked unhealthy", 0.1)
    vip = next(s["vip"] for s in reg.doc["services"].values() if s["name"] == "checked")
    r = client(reg, vip, 7000)
    assert r.get("error") == "ConnectionResetError" or r.get("greeting") == [], r  # no healthy endpoint
    reg.spawn("spare", [sys.executable, PEERS, "serve", "spare"])
    wait_until(lambda: health() == ["healthy"], 5, "the endpoint marked healthy again", 0.1)
    wait_until(lambda: client(reg, vip, 7000, size=10).get("greeting", [])[:1] == ["spare"], 5,
               "connections to reach the healthy endpoint", 0.1)


def test_dead_nodes_endpoints_leave_with_its_lease(reg):
    web2 = [e for e in reg.doc["endpoints"].values() if e["node"] == "n2"]
    assert web2
    pid = reg.ctl("n2").forwarder_pid()
    os.kill(pid, 9)
    wait_until(lambda: not any(e["node"] == "n2" for e in reg.doc["endpoints"].values()),
               LEASE_TTL + 5, "n2's endpoints to leave with its lease", 0.5)
    wait_until(lambda: all(client(reg, reg.vips["web"], 7000).get("greeting", [None])[0] == "web1"
                           for _ in range(6)), 10, "n1's forwarder to send every connection to web1", 0.2)
    reg.ctl("n2").up()
    wait_until(lambda: any(e["node"] == "n2" for e in reg.doc["endpoints"].values()), 5,
               "n2's endpoints back", 0.2)



def test_malformed_dns_from_a_pod_never_hurts_the_resolver(reg):
    """Garbage on port 53 from an app: FORMERR where an id can be read,
    silence otherwise, and the resolver goes on answering."""
    code = ("import socket, sys, os, json, random\n"
            "random.seed(7); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3)\n"
            "server = ('198.18.250.53', 53)\n"
            "formerr = silent = 0\n"
            "packets = [b'', b'\\x12', b'\\x12\\x34' + b'\\xff' * 10, b'\\x12\\x34\\x01\\x00\\x00\\x01' + b'\\x00' * 6 + b'\\x40' + b'a' * 64]\n"
            "packets += [bytes(random.getrandbits(8) for _ in range(random.randint(0, 80))) for _ in range(200)]\n"
            "for p in packets:\n"
            "    s.sendto(p, server)\n"
            "    try:\n"
            "        data, src = s.recvfrom(2048)\n"
            "        formerr += (data[3] & 0x0f) in (1, 4, 5)\n"
            "    except socket.timeout:\n"
            "        silent += 1\n"
            "print(json.dumps({'formerr': formerr, 'silent': silent}))\n")
    r = reg.run("client", [sys.executable, "-c", code], timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["formerr"] >= 1 and out["silent"] >= 1, out
    assert resolve(reg, "web", "ahostsv4") == (0, [reg.vips["web"]])
    st = reg.ctl("n1").status()
    assert st["dns"]["formerr"] >= 1 and st["running"]


FAKE_UPSTREAM = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 5353))
while True:
    q, peer = s.recvfrom(2048)
    qid, qd_end = q[:2], 12
    while q[qd_end]: qd_end += q[qd_end] + 1
    question = q[12:qd_end + 5]
    answer = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton("198.18.77.77")
    s.sendto(qid + b"\\x81\\x80\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00" + question + answer, peer)
"""


def test_names_outside_the_mesh_go_to_the_configured_upstream(reg):
    """MeshSettings.upstreamDns: the forwarder relays other names there (a fake
    resolver in a pod here: nothing leaves the machine)."""
    ip = reg.doc["pods"]["web1"]["ip"]
    reg.spawn("web1", [sys.executable, "-c", FAKE_UPSTREAM, ip])  # polled below: answers once bound
    apply(reg, f"apiVersion: glasswing.dev/v1\nkind: MeshSettings\nmetadata: {{name: mesh}}\n"
               f"spec: {{upstreamDns: '{ip}:5353'}}\n")
    try:
        wait_until(lambda: resolve(reg, "example.org") == (0, ["198.18.77.77"]), 5,
                   "example.org answered by the configured upstream", 0.1)
        assert resolve(reg, "web", "ahostsv4") == (0, [reg.vips["web"]])  # mesh names still answered by the mesh
        assert reg.ctl("n1").status()["dns"]["forwarded"] >= 1
    finally:
        subprocess.run([GLASSWING, "delete", "meshsettings", "mesh"], env=reg.env, capture_output=True)
