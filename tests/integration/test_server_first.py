"""A server-first protocol on a port with no declared protocol (issue 14, item 4): the first
connection waits out the sniff deadline, the forwarder learns the service port is server-first,
and the next connections skip the sniff; `glasswing status` shows the port. The server is
peers.py's greeting echo (a line on accept, as SMTP or MySQL greet), in pods on this node and
on the other one (through the tunnel).

    n1 (forwarder)                 n2 (forwarder)
      client                         db2 (greeting echo on 7000)
      db1 (greeting echo on 7000)
    services (7000, undeclared): near -> db1, far -> db2
"""
import json
import subprocess
import sys

import pytest

from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import PEERS, client, wait_listening, wait_synced

GLASSWING = [sys.executable, "-m", "glasswing"]  # the worktree's own CLI
SERVER = {"near": "db1", "far": "db2"}


@pytest.fixture(scope="module")
def sf(kernel_before):
    lab = Lab("gwsf")
    try:
        lab.node("n1")
        lab.node("n2")
        lab.pod("client", "n1")
        lab.pod("db1", "n1")
        lab.pod("db2", "n2")
        lab.service("near", ports=["7000"], endpoints=["db1"])
        lab.service("far", ports=["7000"], endpoints=["db2"])
        lab.up("n1")
        lab.up("n2")
        doc = lab.doc
        lab.vips = {s["name"]: s["vip"] for s in doc["services"].values()}
        for pod in ("db1", "db2"):
            lab.spawn(pod, [sys.executable, PEERS, "echo", pod])
            wait_listening(lab, "client", doc["pods"][pod]["ip"], 7000)
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())


def status(lab, *args):
    r = subprocess.run([*GLASSWING, "--node", "n1", "status", *args], env=lab.env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("service", ["near", "far"])
def test_a_server_first_port_pays_the_sniff_wait_once(sf, service):
    before = json.loads(status(sf, "--json"))["stats"]
    for i in range(5):
        r = client(sf, sf.vips[service], 7000, size=1000)
        assert r.get("error") is None and r["same"] and r["greeting"][0] == SERVER[service], r
    after = json.loads(status(sf, "--json"))
    stats = {k: after["stats"][k] - before[k] for k in
             ("sniffed_opaque", "sniffed_http", "sniff_skipped", "server_first_learned")}
    # the first connection waited for the client, saw the server greet first and marked the port
    assert stats == {"sniffed_opaque": 1, "sniffed_http": 0, "sniff_skipped": 4, "server_first_learned": 1}, stats
    (mark,) = [m for m in after["server_first"] if m["service"] == f"default/{service}"]
    assert mark["port"] == 7000 and mark["skipped"] == 4 and mark["expires_in_s"] > 0
    text = status(sf)
    assert f"default/{service}:7000  learned" in text and "4 skipped" in text, text


def test_the_mark_goes_with_its_service_port(sf):
    client(sf, sf.vips["near"], 7000)
    assert any(m["service"] == "default/near" for m in json.loads(status(sf, "--json"))["server_first"])
    sf.ctl().service_rm("near")
    wait_synced(sf)
    assert not any(m["service"] == "default/near" for m in json.loads(status(sf, "--json"))["server_first"])
