"""Forwarder death and return, fail open and closed, and teardown that
leaves nothing in the kernel (checked with ip and bpftool)."""
import json
import sys
import time

import pytest

from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import client, kill_forwarder, start_peers


@pytest.fixture
def lab(kernel_before):
    lab = Lab("gwlife")
    try:
        lab.node("n1")
        lab.node("n2")
        lab.pod("app", "n1")
        lab.pod("strict", "n1", fail_mode="closed")
        lab.pod("web1", "n1")
        lab.pod("web2", "n2")
        lab.service("echo", ports=["7000"], endpoints=["web1", "web2"])
        lab.up("n1")
        lab.up("n2")
        start_peers(lab, ("web1", "web2"), "app")
        lab.vip = lab.doc["services"]["default/echo"]["vip"]
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())


def test_killed_forwarder_fails_open_and_mesh_resumes(lab):
    before = [client(lab, lab.vip, 7000, size=100, pod="app") for _ in range(4)]
    assert {r["greeting"][1] for r in before} == {"127.0.0.6"}
    kill_forwarder(lab, "n1")
    during = [client(lab, lab.vip, 7000, size=100, pod="app") for _ in range(6)]
    for r in during:
        assert r.get("error") is None and r["same"], r
        assert r["peername"] == [lab.vip, 7000]  # the app still sees the VIP
        assert r["greeting"][1] == lab.doc["pods"]["app"]["ip"]  # straight to the endpoint
    # a fail-closed pod is refused at once
    r = client(lab, lab.vip, 7000, pod="strict")
    assert r.get("error") == "PermissionError" and r["seconds"] < 0.5, r
    lab.ctl("n1").up()
    after = [client(lab, lab.vip, 7000, size=100, pod="app") for _ in range(4)]
    assert {r["greeting"][1] for r in after} == {"127.0.0.6"}
    assert {r["greeting"][0] for r in after} == {"web1", "web2"}
    assert client(lab, lab.vip, 7000, size=100, pod="strict")["same"]


def test_established_connections_survive_store_changes(lab):
    """A stream in flight keeps going while services and pods change."""
    code = ("import socket, sys, time\n"
            "s = socket.create_connection((sys.argv[1], 7000), 5); s.makefile('rb').readline()\n"
            "for i in range(30):\n"
            "    s.sendall(b'x' * 1000); got = 0\n"
            "    while got < 1000: got += len(s.recv(1000 - got))\n"
            "    time.sleep(0.1)  # paced: a stream that lasts 3 s\n"
            "print('ok')\n")
    p = lab.spawn("app", [sys.executable, "-c", code, lab.vip], stdout=-1, stderr=-1)
    time.sleep(0.5)  # the input: the stream under way before anything changes
    lab.service("other", ports=["7001"], endpoints=["web2"])
    lab.pod("late", "n1")
    lab.ctl().pod_rm("late")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and out.strip() == b"ok", err


def test_down_removes_everything_it_made(lab, kernel_before):
    for node in ("n1", "n2"):
        lab.down(node)
    snap = leaks.snapshot()
    assert snap["programs"] == kernel_before["programs"], "programs left after down"
    assert snap["pins"] == kernel_before["pins"], "pins left after down"
    assert snap["forwarders"] == kernel_before["forwarders"]
    # with no forwarder and no programs, a service address goes nowhere
    r = client(lab, lab.vip, 7000, pod="app")
    assert r.get("error") is not None, r
    json.dumps(r)
