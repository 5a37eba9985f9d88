"""TrafficPolicy at L4, end to end: policies applied with `glasswing apply`
take effect in running forwarders, and real apps in pods see retries, rate
limits, circuit breaking, outlier ejection, idle timeouts and the load
balancers at work. Counts come from the forwarders' stats (`status`).

    n1 (forwarder)                      n2 (forwarder)
      client, client2                     e2 198.18.2.x app=trio
      e1 app=trio                         e3 app=trio
    services (port 7000, each pod runs `peers.py echo NAME`):
      trio, ring -> e1 e2 e3 (selector)   limited, idle -> e1
      capped -> e2 (through the tunnel)   duo -> e1 e2
"""
import json
import subprocess
import sys
import time

import pytest

from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import PEERS, glasswing, wait_listening
from tests.support.wait import wait_until

ENDPOINTS = ("e1", "e2", "e3")


def start_echo(lab, pod):
    lab.echo[pod] = lab.spawn(pod, [sys.executable, PEERS, "echo", pod])
    wait_listening(lab, "client", lab.ips[pod], 7000)


def stop_echo(lab, pod):
    """SIGTERM: the server stops listening at once (connects are refused)."""
    p = lab.echo.pop(pod)
    p.terminate()
    p.wait(10)


@pytest.fixture(scope="module")
def pol(kernel_before):
    lab = Lab("gwpol")
    try:
        lab.node("n1")
        lab.node("n2")
        lab.pod("client", "n1")
        lab.pod("client2", "n1")
        lab.pod("e1", "n1", labels={"app": "trio"})
        lab.pod("e2", "n2", labels={"app": "trio"})
        lab.pod("e3", "n2", labels={"app": "trio"})
        lab.service("trio", ports=["7000"], selector={"app": "trio"})
        lab.service("ring", ports=["7000"], selector={"app": "trio"})
        lab.service("limited", ports=["7000"], endpoints=["e1"])
        lab.service("idle", ports=["7000"], endpoints=["e1"])
        lab.service("capped", ports=["7000"], endpoints=["e2"])
        lab.service("duo", ports=["7000"], endpoints=["e1", "e2"])
        lab.up("n1")
        lab.up("n2")
        doc = lab.doc
        lab.vips = {s["name"]: s["vip"] for s in doc["services"].values()}
        lab.ips = {n: p["ip"] for n, p in doc["pods"].items()}
        lab.echo = {}
        for pod in ENDPOINTS:
            start_echo(lab, pod)
        yield lab
    finally:
        lab.release()
        leaks.assert_clean(kernel_before, leaks.snapshot())


def apply_policy(lab, name, spec: str):
    glasswing(lab, "apply", "-f", "-", stdin="apiVersion: glasswing.dev/v1\nkind: TrafficPolicy\n"
                                             f"metadata: {{name: {name}}}\nspec: {spec}\n")


def delete_policy(lab, name):
    glasswing(lab, "delete", "trafficpolicy", name)


def stats(lab, node="n1"):
    return json.loads(glasswing(lab, "--node", node, "status", "--json"))["stats"]


def delta(before, after, key):
    return after[key] - before[key]


def peer(lab, pod, *args, timeout=60):
    r = lab.run(pod, [sys.executable, PEERS, *map(str, args)], timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class Holder:
    """Connections held open in a pod by `peers.py hold`, one command at a time."""

    def __init__(self, lab, pod, service):
        self.p = lab.spawn(pod, [sys.executable, PEERS, "hold", lab.vips[service], "7000"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def __call__(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


# ------------------------------------------------------------ resilience

def test_killing_an_endpoint_loses_no_connection(pol):
    """No TrafficPolicy: the default single retry takes refused connects to
    another endpoint, so a steady stream never sees the dead one."""
    before = stats(pol)
    stream = pol.spawn("client", [sys.executable, PEERS, "stream", pol.vips["trio"], "7000", "4"],
                       stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the input: the stream under way when e3 goes
        stop_echo(pol, "e3")
        out, _ = stream.communicate(timeout=60)
    finally:
        if "e3" not in pol.echo:
            start_echo(pol, "e3")
    r = json.loads(out)
    after = stats(pol)
    assert r["failures"] == [], r
    assert r["ok"] >= 20 and set(r["pods"]) == set(ENDPOINTS), r  # e3 served until it went away
    assert delta(before, after, "connect_retries") >= 1  # refused connects to e3 were retried
    assert delta(before, after, "refused_connect_failed") == 0


def test_outlier_detection_ejects_a_failing_endpoint_and_brings_it_back(pol):
    apply_policy(pol, "trio", "{service: trio, retryAttempts: 2, outlierDetection: "
                              "{consecutiveFailures: 2, baseEjectionMs: 8000, maxEjectionPercent: 50}}")
    try:
        stop_echo(pol, "e3")
        before = stats(pol)
        t0 = time.monotonic()
        r = peer(pol, "client", "stream", pol.vips["trio"], 7000, 1.5)
        mid = stats(pol)
        assert r["failures"] == [] and r["ok"] >= 6 and "e3" not in r["pods"], r
        assert delta(before, mid, "outlier_ejections") == 1
        assert delta(before, mid, "connect_failures") == 2  # the two that ejected it, then never tried
        r = peer(pol, "client", "stream", pol.vips["trio"], 7000, 1.0)
        assert r["failures"] == [] and "e3" not in r["pods"], r
        assert delta(mid, stats(pol), "connect_failures") == 0
        start_echo(pol, "e3")  # back, but still ejected for a while
        r = peer(pol, "client", "stream", pol.vips["trio"], 7000, 0.5)
        if time.monotonic() - t0 < 7.5:  # surely inside the ejection
            assert "e3" not in r["pods"], r
        seen = False
        while not seen:
            assert time.monotonic() - t0 < 30, "e3 never came back"
            r = peer(pol, "client", "stream", pol.vips["trio"], 7000, 0.5)
            assert r["failures"] == [], r
            seen = "e3" in r["pods"]
        # ejected at the earliest at t0, for 8 s: e3 cannot have served before t0 + 8
        assert time.monotonic() - t0 >= 8.0
        assert delta(before, stats(pol), "outlier_ejections") == 1
    finally:
        if "e3" not in pol.echo:
            start_echo(pol, "e3")
        delete_policy(pol, "trio")


def test_rate_limit_serves_exactly_the_burst(pol):
    """rateLimit 1/s burst 5: of 20 connections at once 5 are served, 15
    reset; a token later one more is served. No forwarder restart."""
    pid = pol.ctl("n1").status()["pid"]
    apply_policy(pol, "limited", "{service: limited, rateLimit: {tokensPerSecond: 1, burst: 5}}")
    try:
        before = stats(pol)
        r = peer(pol, "client", "burst", pol.vips["limited"], 7000, 20)
        after = stats(pol)
        assert (r["served"], r["reset"], r["other"]) == (5, 15, []), r
        assert delta(before, after, "refused_rate_limit") == 15
        time.sleep(1.2)  # the input: time for one token at 1/s
        r = peer(pol, "client", "burst", pol.vips["limited"], 7000, 1)
        assert r["served"] == 1, r
        assert pol.ctl("n1").status()["pid"] == pid
    finally:
        delete_policy(pol, "limited")
    r = peer(pol, "client", "burst", pol.vips["limited"], 7000, 20)
    assert r["served"] == 20, r  # the policy is gone, and so is the limit


def test_circuit_breaker_refuses_the_fourth_connection_until_one_closes(pol):
    apply_policy(pol, "capped", "{service: capped, maxConnections: 3}")
    h = Holder(pol, "client", "capped")
    try:
        before = stats(pol)
        for i in range(3):
            assert h("open")["greeting"][0] == "e2"
        fourth = h("open")
        assert fourth.get("error") in ("ConnectionResetError", "EOF"), fourth
        assert delta(before, stats(pol), "refused_max_connections") == 1
        for i in range(3):
            assert h(f"ping {i}") == {"echo": "ping"}  # the three held ones are untouched
        h("close 0")
        served = None
        deadline = time.monotonic() + 10
        while served is None:
            assert time.monotonic() < deadline, "no slot came free after a close"
            r = h("open")
            served = r.get("greeting")
        assert served[0] == "e2"
        assert h("open").get("error") in ("ConnectionResetError", "EOF")  # three again: full
    finally:
        h.close()
        delete_policy(pol, "capped")


def test_idle_timeout_closes_idle_connections_only(pol):
    apply_policy(pol, "idle", "{service: idle, idleTimeoutMs: 1500}")
    h = Holder(pol, "client", "idle")
    try:
        before = stats(pol)
        assert h("open")["greeting"][0] == "e1"
        assert h("open")["greeting"][0] == "e1"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.5:  # connection 1 stays busy past the timeout
            assert h("ping 1") == {"echo": "ping"}
            time.sleep(0.3)  # the input: connection 1 busy every 0.3 s, under the 1.5 s timeout
        r = h("wait_eof 0 5")
        assert r["eof"], r  # connection 0 was idle all along: closed by the forwarder
        assert h("ping 1") == {"echo": "ping"}
        r = h("wait_eof 1 10")
        assert r["eof"], r
        assert delta(before, stats(pol), "idle_closed") == 2
    finally:
        h.close()
        delete_policy(pol, "idle")


# ------------------------------------------------------------ load balancers

def test_ring_hash_keeps_each_client_on_one_endpoint(pol):
    r = peer(pol, "client", "burst", pol.vips["ring"], 7000, 9)
    assert r["served"] == 9 and len(r["pods"]) == 3, r  # round robin before the policy
    apply_policy(pol, "ring", "{service: ring, loadBalancer: ring_hash}")
    try:
        for client in ("client", "client2"):
            for _ in range(2):
                r = peer(pol, client, "burst", pol.vips["ring"], 7000, 9)
                assert r["served"] == 9 and len(r["pods"]) == 1, (client, r)
    finally:
        delete_policy(pol, "ring")
    r = peer(pol, "client", "burst", pol.vips["ring"], 7000, 9)
    assert len(r["pods"]) == 3, r


def test_least_request_sends_new_connections_to_the_less_loaded(pol):
    """Two endpoints, so power-of-two-choices compares both: after closing
    the connections held on one, the next two both go there (round robin
    would alternate)."""
    apply_policy(pol, "duo", "{service: duo, loadBalancer: least_request}")
    h = Holder(pol, "client", "duo")
    try:
        held = [h("open")["greeting"][0] for _ in range(4)]
        assert sorted(held) == ["e1", "e1", "e2", "e2"], held
        for i, pod in enumerate(held):
            if pod == "e1":
                h(f"close {i}")
        wait_until(lambda: pol.ctl("n1").status()["connections"] == 2, 10, "closed relays gone", 0.1)
        assert [h("open")["greeting"][0] for _ in range(2)] == ["e1", "e1"]
    finally:
        h.close()
        delete_policy(pol, "duo")


def test_weighted_follows_the_weights_of_the_service_endpoints(pol):
    """Weights given on a Service's pod endpoints reach the store with the
    endpoints each node publishes; smooth weighted round robin gives each
    endpoint exactly its weight in every run of (sum of weights) picks."""
    glasswing(pol, "apply", "-f", "-", stdin=(
        "apiVersion: glasswing.dev/v1\nkind: Service\nmetadata: {name: weighted}\n"
        "spec: {ports: [{port: 7000}], endpoints: [{pod: e1, weight: 3}, {pod: e2, weight: 1}]}\n---\n"
        "apiVersion: glasswing.dev/v1\nkind: TrafficPolicy\nmetadata: {name: weighted}\n"
        "spec: {service: weighted, loadBalancer: weighted}\n"))
    try:
        def published():
            eps = [e for e in pol.doc["endpoints"].values() if e["service"] == "default/weighted"]
            return sorted((e["pod"], e["weight"]) for e in eps) == [("e1", 3), ("e2", 1)]
        wait_until(published, 10, "both weighted endpoints in the store", 0.1)
        pol.admin("n1", "sync")
        vip = next(s["vip"] for s in pol.doc["services"].values() if s["name"] == "weighted")
        r = peer(pol, "client", "burst", vip, 7000, 8)
        assert r["served"] == 8 and r["pods"] == {"e1": 6, "e2": 2}, r
    finally:
        delete_policy(pol, "weighted")
        glasswing(pol, "delete", "service", "weighted")
