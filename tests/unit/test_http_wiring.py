"""What the forwarder wires into the HTTP proxy (issue 4, parts 4-5), without root: per-rule
faults and "marked safe" retries from the Route, the circuit breaker per request, the
report(key, outcome) hook that feeds outlier detection, and MeshUpstreams over the catalog
and the policy state (subsets by endpoint labels, ejection by 5xx and timeouts), given a
catalog getter, the policy state and counters (node.mesh_http)."""
import asyncio
import random

from dataplane.node.counters import Counters
from dataplane.node.mesh_http import MeshUpstreams
from dataplane.store.catalog import Catalog
from dataplane.policy.circuit_breaker import CircuitBreaker
from dataplane.http.proxy import NoEndpoint, ServicePolicy
from dataplane.policy.state import Policies
from dataplane.store import registry
from dataplane.store.registry import _empty

from tests.support.http_harness import RESET, Client, ok, routes, setup, status
from tests.support.wait import run, wait_until_async


class Reporting:
    """Wraps FakeUpstreams with the optional report hook."""

    def __init__(self, inner):
        self.inner, self.reports = inner, []

    def pick(self, *a):
        return self.inner.pick(*a)

    async def connect(self, key):
        return await self.inner.connect(key)

    def report(self, key, outcome):
        self.reports.append((key, outcome))


def test_rule_fault_applies_only_to_its_rule():
    async def main():
        table = routes({"match": {"pathPrefix": "/chaos"}, "fault": {"abortPercent": 100, "abortStatus": 418}},
                       {})
        servers, ups, proxy, client = await setup(policy=ServicePolicy(routes=table))
        assert (await client.request(b"/chaos/x"))[0].status == 418
        assert (await client.request(b"/calm"))[0].status == 200
        assert len(servers[0].requests) == 1
        await proxy.stop()
    run(main())


def test_post_is_retried_only_when_the_rule_marks_it_safe():
    def flaky(ctx, req, body):
        return status(503) if len(ctx.server.requests) == 1 else ok()

    async def main():
        for safe, want in ((False, 503), (True, 200)):
            table = routes({"retries": {"attempts": 2, "on": ["503"], "retryNonIdempotent": safe}})
            servers, ups, proxy, client = await setup([flaky], policy=ServicePolicy(routes=table))
            resp, _b, _i = await client.request(method=b"POST", body=b"x")
            assert resp.status == want, safe
            await proxy.stop()
    run(main())


def test_breaker_caps_requests_in_flight_with_503():
    release = asyncio.Event()

    async def slow(ctx, req, body):
        await release.wait()
        return ok()

    async def main():
        breaker = CircuitBreaker(max_connections=1)
        servers, ups, proxy, client = await setup([slow], policy=ServicePolicy(breaker=breaker))
        first = asyncio.ensure_future(client.request())
        await wait_until_async(lambda: breaker.active == 1, what="the first request in flight")
        other = await Client(proxy.addr).open()
        resp, body, _ = await other.request()
        assert resp.status == 503 and resp.get(b"x-glasswing-reason") == b"circuit_open"
        release.set()
        assert (await first)[0].status == 200
        assert breaker.active == 0 and breaker.tripped["max_connections"] == 1
        await proxy.stop()
    run(main())


def test_every_try_is_reported_once_with_its_outcome():
    async def main():
        servers, ups, proxy, client = await setup([lambda c, r, b: status(503), lambda c, r, b: RESET,
                                                   None])
        rep = Reporting(ups)
        proxy.upstreams = rep
        table = routes({"retries": {"attempts": 3, "on": ["5xx", "reset"]}})
        proxy.kw["policy"] = ServicePolicy(routes=table)
        client = await Client(proxy.addr).open()  # a session made after the swap
        resp, _b, _i = await client.request()
        assert resp.status == 200
        outcomes = sorted(str(o) for _k, o in rep.reports)
        assert outcomes == ["200", "503", "reset"], rep.reports
        assert len(rep.reports) == len(ups.picks)
        await proxy.stop()
    run(main())


# --- MeshUpstreams over a catalog ----------------------------------------------------------


def mesh(endpoints, spec=None):
    """A catalog of service default/web (endpoints [(pod, labels)] on node n1), its policy
    state, and the counters MeshUpstreams reports to."""
    doc = _empty()
    doc["services"]["default/web"] = {"namespace": "default", "name": "web", "labels": {},
                                      "vip": "198.19.0.10", "ports": [{"port": 80, "target": 8080,
                                                                       "protocol": "http"}],
                                      "endpoints": [], "selector": {"app": "web"}, "health_check": None}
    for i, (pod, labels) in enumerate(endpoints):
        doc["endpoints"][f"/glasswing/endpoints/n1/default/web/80/{pod}:8080"] = {
            "service": "default/web", "service_port": 80, "pod": pod, "node": "n1",
            "ip": f"198.18.1.{i + 2}", "port": 8080, "health": "healthy", "labels": labels}
    if spec is not None:
        doc["config"]["trafficpolicy"]["default/p"] = spec
    snapshot = registry.snapshot(doc)
    catalog = Catalog(snapshot)
    policies = Policies(rng=random.Random(1))
    policies.update(catalog, snapshot)
    return catalog, policies, Counters()


def upstreams(catalog, policies, counters):
    """MeshUpstreams as MeshHttp makes them; pick and report never dial."""
    return MeshUpstreams(catalog=lambda: catalog, policies=policies, dialer=None,
                         attached=lambda name: name == "client", counters=counters,
                         pod=Pod(), dst=("198.19.0.10", 80), hash_key="198.18.1.9")


class Pod:
    name = "client"


def outlier_policy():
    from dataplane.store import codec
    from dataplane.store import schema as cs
    doc = {"apiVersion": cs.API_VERSION, "kind": "TrafficPolicy", "metadata": {"name": "p"},
           "spec": {"service": "web", "outlierDetection": {"consecutiveFailures": 2, "maxEjectionPercent": 50}}}
    return codec.to_typed(cs.validate(doc, "test", 1))


def test_mesh_upstreams_pick_by_subset_and_avoid_tried():
    ups = upstreams(*mesh([("a", {"version": "v1"}), ("b", {"version": "v1"}), ("c", {"version": "v2"})]))
    picks = {ups.pick("default/web", 80, {"version": "v2"}, set())[1].pod for _ in range(5)}
    assert picks == {"c"}
    first = ups.pick("default/web", 80, {"version": "v1"}, set())
    assert ups.pick("default/web", 80, {"version": "v1"}, {first})[1].pod != first[1].pod
    try:
        ups.pick("default/web", 80, {"version": "v9"}, set())
        raise AssertionError("no NoEndpoint")
    except NoEndpoint:
        pass


def test_mesh_upstreams_eject_after_5xx_and_timeouts_and_count_successes():
    catalog, policies, counters = mesh([("a", {}), ("b", {}), ("c", {})], spec=outlier_policy())
    ups = upstreams(catalog, policies, counters)
    key = ups.pick("default/web", 80, {}, set())
    ups.report(key, 503)
    ups.report(ups.pick("default/web", 80, {}, set()), 200)
    assert counters["outlier_ejections"] == 0
    key2 = next(k for k in iter(lambda: ups.pick("default/web", 80, {}, set()), None) if k == key)
    ups.report(key2, "timeout")
    assert counters["outlier_ejections"] == 1
    seen = {ups.pick("default/web", 80, {}, set())[1].pod for _ in range(10)}
    assert key[1].pod not in seen and len(seen) == 2
    assert ups.picked == {k: v for k, v in ups.picked.items() if v}  # released picks leave no entry
