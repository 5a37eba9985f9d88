"""Three simulated nodes on one real etcd: each forwarder watches it,
registers its pods' endpoints under its own lease, and a service with an
endpoint on every node is reachable from every pod, by name. etcd restarted
mid-run: forwarders keep serving their last good config, report the store
as unavailable, and resync when it returns.

    etcd 127.0.0.1:PORT (host namespace)
    n1: c1, w1     n2: c2, w2     n3: c3, w3      service web (app=web) :7000
"""
import os
import subprocess

import pytest

from lab.etcd_server import EtcdServer, etcd_binary
from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import GLASSWING, client, start_peers
from tests.support.wait import wait_until



@pytest.fixture(scope="module")
def cluster(kernel_before):
    if etcd_binary() is None:
        pytest.skip("needs etcd (Debian package etcd-server)")
    with EtcdServer() as etcd:
        lab = Lab("gwetcd", store=etcd.url)
        try:
            for i in (1, 2, 3):
                lab.node(f"n{i}")
            for i in (1, 2, 3):
                lab.pod(f"c{i}", f"n{i}")
                lab.pod(f"w{i}", f"n{i}", labels={"app": "web"})
            lab.service("web", ports=["7000"], selector={"app": "web"})
            for i in (1, 2, 3):
                lab.up(f"n{i}")
            start_peers(lab, ("w1", "w2", "w3"), "c1")
            lab.etcd = etcd
            yield lab
        finally:
            lab.release()
    leaks.assert_clean(kernel_before, leaks.snapshot())


def only(lab, pod, target, want, n=9) -> bool:
    """n connections in a row all reach one of want (a failed one counts as not)."""
    for _ in range(n):
        r = client(lab, target, 7000, size=100, pod=pod)
        if r.get("error") is not None or not r.get("greeting") or r["greeting"][0] not in want:
            return False
    return True


def greetings(lab, pod, target, n=9):
    out = set()
    for _ in range(n):
        r = client(lab, target, 7000, size=100, pod=pod)
        assert r.get("error") is None and r["same"], r
        out.add(r["greeting"][0])
    return out


def test_every_pod_reaches_every_node_by_name(cluster):
    for i in (1, 2, 3):
        assert greetings(cluster, f"c{i}", "web") == {"w1", "w2", "w3"}


def test_etcd_restart_keeps_traffic_flowing_and_resyncs(cluster):
    cluster.etcd.stop()
    try:
        wait_until(lambda: cluster.ctl("n1").status().get("store") == "unavailable", 10,
                   "the forwarder to notice etcd going away", 0.2)
        assert greetings(cluster, "c2", "web", n=6) == {"w1", "w2", "w3"}  # the last good config
    finally:
        cluster.etcd.start()
    wait_until(lambda: all(cluster.ctl(f"n{i}").status().get("store") == "ok" for i in (1, 2, 3)), 15,
               "the forwarders to resync", 0.2)
    r = subprocess.run([GLASSWING, "apply", "-f", "-"], env=cluster.env, capture_output=True, text=True,
                       input="apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {name: only3}\n"
                             "spec:\n  ports: [{port: 7000}]\n  endpoints: [{pod: w3}]\n", timeout=30)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: client(cluster, "only3", 7000, pod="c1").get("greeting") == ["w3", "127.0.0.6"], 3,
               "only3 to reach w3", 0.1)


def test_dead_nodes_endpoints_leave_etcd_with_its_lease(cluster):
    from dataplane.settings import LEASE_TTL
    os.kill(cluster.ctl("n3").forwarder_pid(), 9)
    wait_until(lambda: not any(e["node"] == "n3" for e in cluster.doc["endpoints"].values()),
               LEASE_TTL + 5, "n3's endpoints to leave etcd with its lease", 0.5)
    wait_until(lambda: only(cluster, "c1", "web", {"w1", "w2"}), 10,
               "n1's forwarder to send every connection to w1 or w2", 0.2)
    assert greetings(cluster, "c1", "web") == {"w1", "w2"}
    cluster.ctl("n3").up()
