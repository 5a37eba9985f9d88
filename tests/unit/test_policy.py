"""dataplane.policy.state: per-service policy state built from the TrafficPolicy
objects of a store Snapshot (validated by the schema, so with its defaults), kept
across store changes, and the Attempt a connection walks through. Fake clock,
seeded rng; endpoints come from a real Catalog of the same Snapshot."""
import random

import pytest

from dataplane.store import codec, registry
from dataplane.store import schema as cs
from dataplane.store import snapshot as snap
from dataplane.store.catalog import Catalog, Endpoint
from dataplane.policy.lb.base import Rotation
from dataplane.policy.lb.ring_hash import RingHash
from dataplane.policy.state import (DEFAULT_RETRIES, Policies, Settings, default_connect_timeout, settings_from,
                              specs_by_service)
from dataplane.settings import CONNECT_TIMEOUT


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def traffic_policy(spec: dict, name="p", namespace="default"):
    """A TrafficPolicy as the store keeps it: validated, then decoded into its snapshot type."""
    return codec.to_typed(cs.validate({"apiVersion": "glasswing.dev/v1", "kind": "TrafficPolicy",
                        "metadata": {"name": name, "namespace": namespace}, "spec": spec}, "t.yaml", 1))


def doc_with(endpoints=("a", "b", "c"), policies=None, services=("web",), mesh_timeout_ms=0, zones=None):
    """A store document: services on port 80, endpoints published by node n1
    (pod a at 198.18.1.1, b at .2 ...), policies {store key: TrafficPolicy}."""
    doc = {"revision": 1, "nodes": {"n1": {}}, "pods": {}, "services": {}, "endpoints": {},
           "config": {"route": {}, "trafficpolicy": dict(policies or {}), "meshsettings": {}, "endpoint": {}}}
    for i, svc in enumerate(services):
        doc["services"][f"default/{svc}"] = {"namespace": "default", "name": svc, "labels": {},
                                             "vip": f"198.19.0.{10 + i}",
                                             "ports": [{"port": 80, "target": 8080}], "endpoints": []}
        for pod in endpoints:
            ip = f"198.18.1.{ord(pod[0]) - ord('a') + 1}"
            doc["endpoints"][f"/glasswing/endpoints/n1/default/{svc}/80/{pod}:8080"] = {
                "service": f"default/{svc}", "service_port": 80, "pod": pod, "node": "n1", "ip": ip,
                "port": 8080, "health": "healthy", "zone": (zones or {}).get(pod, ""), "weight": 1}
    if mesh_timeout_ms:
        doc["config"]["meshsettings"]["-/mesh"] = snap.MeshSettings(
            spec=snap.MeshSettingsSpec(default_connect_timeout_ms=mesh_timeout_ms))
    return doc


def build(doc, clock=None, seed=1, zone=""):
    pol = Policies(clock=clock or Clock(), rng=random.Random(seed))
    return pol, update(pol, doc, local_zone=zone)


def update(pol, doc, **kw):
    """What the forwarder does on a store change: a snapshot, its catalog, the policies updated."""
    snapshot = registry.snapshot(doc)
    cat = Catalog(snapshot)
    pol.update(cat, snapshot, **kw)
    return cat


def eps(cat, svc="web"):
    return cat.by_name[(f"default/{svc}", 80)].endpoints


def admitted(pol, port, endpoints, key=None):
    """An Attempt for a connection the service admitted."""
    assert port.service.admit() is None
    return pol.attempt(port, endpoints, key)


# ------------------------------------------------------------ building settings

def test_no_policy_gives_the_documented_defaults():
    s = settings_from(None)
    assert s == Settings(load_balancer="round_robin", connect_timeout=CONNECT_TIMEOUT, idle_timeout=0.0,
                         max_connections=0, max_pending=0, retries=1, outlier=None, rate_limit=None)
    assert DEFAULT_RETRIES == 1


def test_full_policy_converts_every_field():
    msg = traffic_policy({"service": "web", "loadBalancer": "ring_hash", "connectTimeoutMs": 1500,
                      "idleTimeoutMs": 60000, "maxConnections": 100, "maxPending": 10, "retryAttempts": 2,
                      "outlierDetection": {"consecutiveFailures": 3, "baseEjectionMs": 10000,
                                           "maxEjectionPercent": 0},
                      "rateLimit": {"tokensPerSecond": 50, "burst": 75}})
    assert settings_from(msg.spec) == Settings("ring_hash", 1.5, 60.0, 100, 10, 2, (3, 10.0, 0), (50, 75))


def test_minimal_policy_takes_schema_defaults():
    msg = traffic_policy({"service": "web", "outlierDetection": {}, "rateLimit": {"tokensPerSecond": 5}})
    s = settings_from(msg.spec, default_connect_timeout=2.5)
    assert s == Settings("round_robin", 2.5, 0.0, 0, 0, 1, (5, 30.0, 10), (5, 5))


def test_explicit_zero_retries_means_none():
    assert settings_from(traffic_policy({"service": "web", "retryAttempts": 0}).spec).retries == 0


def test_policies_name_services_of_their_own_namespace_first_key_wins():
    doc = doc_with(policies={"shop/x": traffic_policy({"service": "web", "maxConnections": 1}, "x", "shop"),
                             "default/b": traffic_policy({"service": "web", "maxConnections": 2}, "b"),
                             "default/a": traffic_policy({"service": "web", "maxConnections": 3}, "a")})
    specs = specs_by_service(registry.snapshot(doc))
    assert sorted(specs) == ["default/web", "shop/web"]
    assert specs["default/web"].max_connections == 3 and specs["shop/web"].max_connections == 1


def test_mesh_default_connect_timeout_applies_without_policy():
    doc = doc_with(mesh_timeout_ms=700)
    assert default_connect_timeout(registry.snapshot(doc)) == 0.7
    pol, _ = build(doc)
    assert pol.settings("default/web").connect_timeout == 0.7
    assert pol.settings("default/nope").connect_timeout == 0.7


# ------------------------------------------------------------ admission

def test_rate_limit_admits_burst_then_refills():
    clock = Clock()
    pol, _ = build(doc_with(policies={"default/p": traffic_policy(
        {"service": "web", "rateLimit": {"tokensPerSecond": 5, "burst": 5}})}), clock)
    svc = pol.port("default/web", 80).service
    results = [svc.admit() for _ in range(20)]
    assert results.count(None) == 5 and results[5:] == ["rate_limit"] * 15
    clock.t += 0.2
    assert svc.admit() is None and svc.admit() == "rate_limit"


def test_breaker_refuses_the_fourth_and_admits_after_a_close():
    pol, cat = build(doc_with(policies={"default/p": traffic_policy({"service": "web", "maxConnections": 3})}))
    port = pol.port("default/web", 80)
    held = []
    for _ in range(3):
        assert port.service.admit() is None
        a = pol.attempt(port, eps(cat))
        a.pick()
        a.connected()
        held.append(a)
    assert port.service.admit() == "max_connections"
    held[0].close()
    held[0].close()  # idempotent
    assert port.service.breaker.active == 2
    assert port.service.admit() is None


def test_max_pending_counts_connects_in_progress():
    pol, cat = build(doc_with(policies={"default/p": traffic_policy({"service": "web", "maxPending": 2})}))
    port = pol.port("default/web", 80)
    assert port.service.admit() is None and port.service.admit() is None
    assert port.service.admit() == "max_pending"
    a = pol.attempt(port, eps(cat))  # the first admitted one
    a.pick()
    a.connected()  # one connect done: room for another pending one
    assert port.service.admit() is None


# ------------------------------------------------------------ attempts

def test_default_retries_once_on_another_endpoint_then_gives_up():
    pol, cat = build(doc_with())
    port = pol.port("default/web", 80)
    assert port.service.admit() is None
    a = pol.attempt(port, eps(cat))
    first = a.pick()
    delay = a.failed("refused")
    assert delay is not None and 0 <= delay <= 0.025
    second = a.pick()
    assert second != first
    assert a.failed("refused") is None and a.retry.gave_up == "attempts"
    a.close()
    assert port.service.breaker.active == 0 and port.service.breaker.pending == 0


def test_other_failures_are_not_retried():
    pol, cat = build(doc_with())
    a = pol.attempt(pol.port("default/web", 80), eps(cat))
    a.pick()
    assert a.failed("rejected") is None and a.retry.gave_up == "rejected"


def test_zero_retries_policy_gives_up_at_once():
    pol, cat = build(doc_with(policies={"default/p": traffic_policy({"service": "web", "retryAttempts": 0})}))
    a = pol.attempt(pol.port("default/web", 80), eps(cat))
    a.pick()
    assert a.failed("refused") is None


def test_outlier_ejects_after_consecutive_failures_and_returns_after_the_time():
    clock = Clock()
    pol, cat = build(doc_with(policies={"default/p": traffic_policy(
        {"service": "web", "retryAttempts": 2,
         "outlierDetection": {"consecutiveFailures": 2, "baseEjectionMs": 5000, "maxEjectionPercent": 50}})}),
        clock)
    port = pol.port("default/web", 80)
    dead = eps(cat)[0]
    ejected = []
    for _ in range(6):
        a = admitted(pol, port, eps(cat))
        while True:
            ep = a.pick()
            if ep == dead:
                a.failed("refused")
                ejected.append(a.ejected)
                continue
            a.connected()
            break
        assert a.endpoint != dead
        a.close()
    assert ejected == [False, True]  # tried twice, then never again while ejected
    assert port.ejected() == 1
    picks = set()
    for _ in range(6):
        a = admitted(pol, port, eps(cat))
        picks.add(a.pick())
        a.close()
    assert dead not in picks
    clock.t += 5.0
    picks = set()
    for _ in range(6):
        a = admitted(pol, port, eps(cat))
        picks.add(a.pick())
        a.close()
    assert dead in picks and port.ejected() == 0


def test_every_endpoint_ejected_still_picks_one():
    clock = Clock()
    pol, cat = build(doc_with(endpoints=("a",), policies={"default/p": traffic_policy(
        {"service": "web", "outlierDetection": {"consecutiveFailures": 1, "maxEjectionPercent": 100}})}),
        clock)
    port = pol.port("default/web", 80)
    a = pol.attempt(port, eps(cat))
    a.pick()
    a.failed("refused")
    assert a.ejected and port.ejected() == 1
    assert pol.attempt(port, eps(cat)).pick() == eps(cat)[0]


def test_ring_hash_keeps_a_key_on_one_endpoint():
    pol, cat = build(doc_with(policies={"default/p": traffic_policy({"service": "web", "loadBalancer": "ring_hash"})}))
    port = pol.port("default/web", 80)
    assert isinstance(port.balancer, RingHash)
    for key in ("198.18.1.9", "198.18.2.7"):
        assert len({pol.attempt(port, eps(cat), key).pick() for _ in range(20)}) == 1
    many = {pol.attempt(port, eps(cat), f"198.18.3.{i}").pick() for i in range(40)}
    assert len(many) == 3


def test_least_request_goes_to_the_less_loaded_and_releases_on_close():
    pol, cat = build(doc_with(endpoints=("a", "b"), policies={"default/p": traffic_policy(
        {"service": "web", "loadBalancer": "least_request"})}))
    port = pol.port("default/web", 80)
    held = []
    for _ in range(4):
        a = admitted(pol, port, eps(cat))
        a.pick()
        a.connected()
        held.append(a)
    assert sorted(port.balancer.active(e) for e in eps(cat)) == [2, 2]
    gone = [a for a in held if a.endpoint == eps(cat)[0]]
    for a in gone:
        a.close()
    new = [pol.attempt(port, eps(cat)) for _ in range(2)]
    assert [a.pick() for a in new] == [eps(cat)[0]] * 2


def test_failed_pick_is_released_to_the_balancer_it_came_from():
    doc = doc_with(policies={"default/p": traffic_policy({"service": "web", "loadBalancer": "least_request"})})
    pol, cat = build(doc)
    port = pol.port("default/web", 80)
    a = admitted(pol, port, eps(cat))
    ep = a.pick()
    a.connected()
    old = port.balancer
    doc["config"]["trafficpolicy"]["default/p"] = traffic_policy({"service": "web", "loadBalancer": "round_robin"})
    update(pol, doc)
    assert isinstance(port.balancer, Rotation)
    assert old.active(ep) == 1
    a.close()
    assert old.active(ep) == 0


def test_zone_preference_keeps_local_then_spills_when_local_is_ejected():
    clock = Clock()
    doc = doc_with(endpoints=("a", "b", "c"), zones={"a": "z1", "b": "z2", "c": "z2"},
                   policies={"default/p": traffic_policy({"service": "web", "outlierDetection": {
                       "consecutiveFailures": 1, "maxEjectionPercent": 50}})})
    pol, cat = build(doc, clock, zone="z1")
    port = pol.port("default/web", 80)
    local = eps(cat)[0]
    assert local.zone == "z1"
    assert {pol.attempt(port, eps(cat)).pick() for _ in range(6)} == {local}
    a = pol.attempt(port, eps(cat))
    a.pick()
    a.failed("refused")
    assert a.ejected
    assert local not in {pol.attempt(port, eps(cat)).pick() for _ in range(6)}


# ------------------------------------------------------------ state across store changes

def test_unrelated_changes_keep_ejections_breaker_counts_and_tokens():
    clock = Clock()
    doc = doc_with(services=("web", "other"), policies={"default/p": traffic_policy(
        {"service": "web", "maxConnections": 5, "rateLimit": {"tokensPerSecond": 1, "burst": 3},
         "outlierDetection": {"consecutiveFailures": 1, "maxEjectionPercent": 50}})})
    pol, cat = build(doc, clock)
    port = pol.port("default/web", 80)
    svc = port.service
    assert svc.admit() is None
    a = pol.attempt(port, eps(cat))
    a.pick()
    a.failed("refused")
    assert a.ejected
    balancer, detector, bucket = port.balancer, port.outlier, svc.bucket
    # another service's endpoints change, another policy appears, revision moves on
    del doc["endpoints"]["/glasswing/endpoints/n1/default/other/80/c:8080"]
    doc["config"]["trafficpolicy"]["default/q"] = traffic_policy({"service": "other", "maxConnections": 1}, "q")
    doc["revision"] = 2
    update(pol, doc)
    assert pol.port("default/web", 80) is port and port.service is svc
    assert port.balancer is balancer and port.outlier is detector and svc.bucket is bucket
    assert port.ejected() == 1 and svc.breaker.pending == 1
    assert svc.bucket.available() == pytest.approx(2.0)
    assert pol.settings("default/other").max_connections == 1


def test_policy_change_updates_limits_in_place_and_replaces_only_what_changed():
    doc = doc_with(policies={"default/p": traffic_policy(
        {"service": "web", "maxConnections": 1, "outlierDetection": {"consecutiveFailures": 1,
                                                                     "maxEjectionPercent": 50}})})
    pol, cat = build(doc)
    port = pol.port("default/web", 80)
    assert port.service.admit() is None
    a = pol.attempt(port, eps(cat))
    a.pick()
    a.connected()
    assert port.service.admit() == "max_connections"
    balancer, detector = port.balancer, port.outlier
    doc["config"]["trafficpolicy"]["default/p"] = traffic_policy(
        {"service": "web", "maxConnections": 2, "outlierDetection": {"consecutiveFailures": 1,
                                                                     "maxEjectionPercent": 50}})
    update(pol, doc)
    assert port.balancer is balancer and port.outlier is detector
    assert port.service.breaker.active == 1  # the open connection still counts
    assert port.service.admit() is None and port.service.admit() == "max_connections"
    doc["config"]["trafficpolicy"]["default/p"] = traffic_policy({"service": "web", "maxConnections": 2})
    update(pol, doc)
    assert port.outlier is None


def test_endpoint_leaving_forgets_its_outlier_state_only():
    clock = Clock()
    doc = doc_with(endpoints=("a", "b", "c", "d"), policies={"default/p": traffic_policy(
        {"service": "web", "outlierDetection": {"consecutiveFailures": 1, "maxEjectionPercent": 50}})})
    pol, cat = build(doc, clock)
    port = pol.port("default/web", 80)
    for victim in eps(cat)[:2]:
        a = pol.attempt(port, [victim])
        a.pick()
        a.failed("refused")
        assert a.ejected
    del doc["endpoints"]["/glasswing/endpoints/n1/default/web/80/a:8080"]
    update(pol, doc)
    assert port.ejected() == 1 and port.outlier.is_ejected(("198.18.1.2", 8080))


def test_removed_service_drops_its_state():
    doc = doc_with(services=("web", "other"))
    pol, _ = build(doc)
    first = pol.port("default/other", 80)
    del doc["services"]["default/other"]
    update(pol, doc)
    assert "default/other" not in pol.services
    assert pol.port("default/other", 80) is not first


# ------------------------------------------------------------ catalog endpoints

def test_catalog_endpoints_carry_weight_zone_labels():
    doc = doc_with(endpoints=("a",), zones={"a": "z1"})
    doc["services"]["default/web"]["endpoints"] = [
        {"pod": None, "port": 9000, "address": "198.18.9.9", "weight": 7, "zone": "z2", "labels": {"v": "1"}}]
    cat = Catalog(registry.snapshot(doc))
    published, static = sorted(eps(cat), key=lambda e: e.ip)
    assert (published.weight, published.zone) == (1, "z1")
    assert (static.ip, static.port, static.weight, static.zone, static.labels) == ("198.18.9.9", 9000, 7, "z2",
                                                                                    {"v": "1"})


def test_endpoint_identity_ignores_labels_but_not_weight():
    a = Endpoint("p", "n", "198.18.1.1", 80, 1, "z", {"x": "1"})
    assert a == Endpoint("p", "n", "198.18.1.1", 80, 1, "z", {"x": "2"})
    assert hash(a) == hash(Endpoint("p", "n", "198.18.1.1", 80, 1, "z"))
    assert a != Endpoint("p", "n", "198.18.1.1", 80, 2, "z")
    assert a.addr == ("198.18.1.1", 80)
