"""dataplane.store.snapshot and codec: config decoded into typed, frozen objects at the store
boundary, back into the same protobuf bytes, and the Snapshot of a real store's document."""
import dataclasses
import pickle

import pytest

from dataplane.store import codec, kinds, registry
from dataplane.store import config as config_store
from dataplane.store import schema as cs
from dataplane.store import snapshot as snap
from dataplane.store.kv_file import FileKV

FULL = """apiVersion: glasswing.dev/v1
kind: Service
metadata: {name: orders, namespace: shop, labels: {team: checkout}}
spec:
  vip: 198.19.0.20
  ports: [{port: 80, targetPort: 8080, protocol: http, name: web}, {port: 9000}]
  endpoints: [{pod: a, port: 8081, weight: 3, zone: z1, labels: {v: "1"}}, {address: 198.18.7.7}]
  healthCheck: {type: http, path: /healthz, intervalMs: 2000}
---
apiVersion: glasswing.dev/v1
kind: Endpoint
metadata: {name: ext, namespace: shop}
spec: {service: orders, address: 198.18.9.9, port: 80, labels: {v: "2"}, zone: z2, health: healthy}
---
apiVersion: glasswing.dev/v1
kind: Route
metadata: {name: orders, namespace: shop}
spec:
  service: orders
  rules:
  - match: {host: "*.shop.local", pathPrefix: /api, method: GET, headers: {x-canary: "yes"}}
    split: [{subset: {v: "1"}, weight: 90}, {subset: {v: "2"}, weight: 10}]
    timeoutMs: 3000
    retries: {attempts: 2, perTryTimeoutMs: 1000, on: [5xx, 409], retryNonIdempotent: true}
    setHeaders: {x-route: canary}
    fault: {delayMs: 5, delayPercent: 10, abortPercent: 1}
  - match: {}
  - {}
---
apiVersion: glasswing.dev/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: shop}
spec:
  service: orders
  loadBalancer: least_request
  retryAttempts: 0
  outlierDetection: {maxEjectionPercent: 0}
  rateLimit: {tokensPerSecond: 5}
---
apiVersion: glasswing.dev/v1
kind: MeshSettings
metadata: {name: mesh}
spec: {dnsSuffix: mesh.local, upstreamDns: 9.9.9.9, searchNamespaces: [shop], defaultConnectTimeoutMs: 700}
"""


@pytest.fixture
def documents(tmp_path):
    path = tmp_path / "all.yaml"
    path.write_text(FULL)
    return cs.load_all([str(path)])


def test_every_kind_round_trips_to_the_same_bytes(documents):
    assert sorted(d.kind for d in documents) == sorted(kinds.KINDS)
    for d in documents:
        typed = codec.to_typed(d.message)
        assert type(typed).__name__ == d.kind
        back = codec.to_message(typed)
        assert back == d.message
        assert back.SerializeToString(deterministic=True) == d.message.SerializeToString(deterministic=True)


def test_absent_and_empty_messages_stay_apart(documents):
    route = codec.to_typed(next(d for d in documents if d.kind == "Route").message)
    first, empty_match, bare = route.spec.rules
    assert first.fault == snap.Fault(delay_ms=5, delay_percent=10, abort_status=503, abort_percent=1)
    assert first.retries.on == ("5xx", "409") and first.split[1].subset == {"v": "2"}
    assert empty_match.match == snap.RouteMatch() and bare.match is None and bare.fault is None
    policy = codec.to_typed(next(d for d in documents if d.kind == "TrafficPolicy").message)
    assert policy.spec.outlier_detection == snap.OutlierDetection(5, 30000, 0)  # explicit 0 kept
    assert policy.spec.retry_attempts == 0 and policy.spec.rate_limit == snap.RateLimit(5, 5)


def test_objects_are_frozen_and_hashable(documents):
    route = codec.to_typed(next(d for d in documents if d.kind == "Route").message)
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.spec.service = "other"
    with pytest.raises(TypeError):
        route.spec.rules[0].set_headers["x"] = "y"
    assert hash(route) == hash(codec.to_typed(codec.to_message(route)))
    assert pickle.loads(pickle.dumps(route)) == route


def test_service_records_give_the_same_typed_service_as_the_message(documents):
    msg = next(d for d in documents if d.kind == "Service").message
    assert registry.service_snapshot("shop/orders", registry.service_to_dict(msg)) == codec.to_typed(msg)


def test_snapshot_of_a_real_store(tmp_path, documents):
    store = registry.Registry(FileKV(str(tmp_path / "kv")), "test")
    config_store.apply(store, documents)
    doc = store.read()
    assert all(isinstance(o, snap.TrafficPolicy) for o in doc["config"]["trafficpolicy"].values())
    s = registry.snapshot(doc)
    assert s.revision == doc["revision"] and s.cluster == doc["cluster"]
    assert s.services["shop/orders"].spec.ports[0] == snap.ServicePort("web", 80, 8080, "http")
    assert s.services["shop/orders"].spec.health_check.timeout_ms == 1000
    assert s.endpoint_objects["shop/ext"].spec.address == "198.18.9.9"
    assert s.routes["shop/orders"].spec.rules[0].timeout_ms == 3000
    assert s.traffic_policies["shop/orders"].spec.load_balancer == "least_request"
    assert s.mesh == snap.MeshSettingsSpec("mesh.local", "9.9.9.9:53", ("shop",), 700)
    # the snapshot is a copy: later changes to the document do not reach it
    del doc["config"]["route"]["shop/orders"]
    assert "shop/orders" in s.routes
    # reading and writing back unchanged typed objects commits nothing
    before = store.read()["revision"]
    with store.transaction():
        pass
    assert store.read()["revision"] == before


def test_snapshot_of_a_partial_document():
    s = registry.snapshot({"pods": {"a": {"node": "n", "ip": "198.18.1.2"}}, "services": {}, "endpoints": {}})
    assert s.pods["a"] == snap.Pod("a", "n", "198.18.1.2") and s.mesh is None and s.revision == 0


def test_a_snapshot_reuses_what_did_not_change_since_the_previous_one(tmp_path, documents):
    store = registry.Registry(FileKV(str(tmp_path / "kv")), "test")
    config_store.apply(store, documents)
    doc = store.read()
    doc["endpoints"]["/glasswing/endpoints/n1/shop/orders/80/a:8081"] = {
        "service": "shop/orders", "service_port": 80, "pod": "a", "node": "n1", "ip": "198.18.1.2",
        "port": 8081, "health": "healthy"}
    first = registry.snapshot(doc)
    # a watch event replaces the service's record; the endpoint's record stays the same object
    registry.apply_put(doc, "/glasswing/config/service/shop/orders",
                       codec.to_message(first.services["shop/orders"]).SerializeToString())
    second = registry.snapshot(doc, first)
    assert second == registry.snapshot(doc)
    assert second.services["shop/orders"] == first.services["shop/orders"]
    assert second.services["shop/orders"] is not first.services["shop/orders"]  # made again
    key = "/glasswing/endpoints/n1/shop/orders/80/a:8081"
    assert second.endpoints[key] is first.endpoints[key]  # reused
