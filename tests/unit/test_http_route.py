import random
from collections import Counter

import pytest

from dataplane.store import codec
from dataplane.store import schema as cs
from dataplane.http import h1 as h
from dataplane.http import route as hr
from dataplane.proto import config_pb2 as pb


def route(*rules):
    """A RouteSpec as the store's snapshot holds it, from camelCase rule dicts."""
    doc = {"apiVersion": cs.API_VERSION, "kind": "Route", "metadata": {"name": "r"},
           "spec": {"service": "web", "rules": list(rules)}}
    return codec.to_typed(cs.validate(doc, "test", 1)).spec


def req(target=b"/", method=b"GET", host=b"web.local", headers=()):
    hs = ((b"Host", host),) if host is not None else ()
    return h.Request(method, target, b"1.1", hs + tuple(headers))


def index(table, request):
    rule = table.match(request)
    return None if rule is None else rule.index


# --- matching -----------------------------------------------------------------------------

def test_first_matching_rule_wins_and_empty_match_takes_everything():
    table = hr.RouteTable(route({"match": {"pathPrefix": "/api"}}, {"match": {"pathPrefix": "/"}}, {}))
    assert table.service == "web"
    assert index(table, req(b"/api/x")) == 0
    assert index(table, req(b"/other")) == 1
    assert index(table, req(b"*", method=b"OPTIONS")) == 2  # no path at all


def test_no_rule_matches():
    table = hr.RouteTable(route({"match": {"pathExact": "/only"}}))
    assert table.match(req(b"/else")) is None


@pytest.mark.parametrize("host,expected", [
    (b"web.local", True), (b"WEB.Local", True), (b"web.local:8080", True), (b"web.local.", True),
    (b"api.web.local", False), (b"eb.local", False), (b"web.localhost", False),
])
def test_host_exact(host, expected):
    table = hr.RouteTable(route({"match": {"host": "web.local"}}))
    assert (table.match(req(host=host)) is not None) == expected


@pytest.mark.parametrize("host,expected", [
    (b"a.shop.local", True), (b"a.b.shop.local:80", True), (b"A.SHOP.LOCAL", True),
    (b"shop.local", False), (b"ashop.local", False), (b".shop.local", False),
])
def test_host_wildcard(host, expected):
    table = hr.RouteTable(route({"match": {"host": "*.shop.local"}}))
    assert (table.match(req(host=host)) is not None) == expected


def test_host_from_absolute_form_target_wins_over_host_header():
    table = hr.RouteTable(route({"match": {"host": "api.local"}}))
    assert table.match(req(b"http://api.local:81/x", host=b"other")) is not None
    assert table.match(req(b"/x", host=b"other")) is None


def test_missing_host_matches_no_host_rule():
    table = hr.RouteTable(route({"match": {"host": "web.local"}}))
    assert table.match(req(host=None)) is None


def test_normalise_host_ipv6_and_ports():
    assert hr.normalise_host("[::1]:8080") == "[::1]"
    assert hr.normalise_host("10.0.0.1:80") == "10.0.0.1"
    assert hr.normalise_host(" Web.Local. ") == "web.local"


@pytest.mark.parametrize("match,path,expected", [
    ({"pathExact": "/a"}, b"/a", True),
    ({"pathExact": "/a"}, b"/a?x=1", True),  # query string removed
    ({"pathExact": "/a"}, b"/a/", False),
    ({"pathExact": "/a"}, b"/A", False),
    ({"pathPrefix": "/api"}, b"/api", True),
    ({"pathPrefix": "/api"}, b"/apiary", True),  # a plain string prefix
    ({"pathPrefix": "/api/"}, b"/api", False),
    ({"pathPrefix": "/api"}, b"/x/api", False),
    ({"pathRegex": "/users/[0-9]+"}, b"/users/42", True),
    ({"pathRegex": "/users/[0-9]+"}, b"/users/42/edit", False),  # whole path
    ({"pathRegex": "/users/[0-9]+"}, b"/x/users/42", False),
    ({"pathRegex": "/users/[0-9]+"}, b"/users/42?a=b", True),
    ({"pathExact": "/b"}, b"/a/../b", False),  # not normalised
    ({"pathExact": "/a"}, b"http://web.local/a?q", True),
])
def test_paths(match, path, expected):
    table = hr.RouteTable(route({"match": match}))
    assert (table.match(req(path)) is not None) == expected


def test_regex_is_compiled_once():
    table = hr.RouteTable(route({"match": {"pathRegex": "/v[12]/.*"}}))
    assert table.rules[0].path_regex.pattern == "/v[12]/.*"


def test_method():
    table = hr.RouteTable(route({"match": {"method": "POST"}}))
    assert table.match(req(method=b"POST")) is not None
    assert table.match(req(method=b"GET")) is None
    assert table.match(req(method=b"post")) is None


def test_headers_all_must_match_exactly():
    table = hr.RouteTable(route({"match": {"headers": {"X-Canary": "yes", "x-team": "shop"}}}))
    assert table.match(req(headers=((b"x-canary", b"yes"), (b"X-TEAM", b"shop")))) is not None
    assert table.match(req(headers=((b"x-canary", b"yes"),))) is None
    assert table.match(req(headers=((b"x-canary", b"Yes"), (b"x-team", b"shop")))) is None
    assert table.match(req(headers=((b"x-canary", b"no"), (b"x-canary", b"yes"), (b"x-team", b"shop")))) is not None


def test_all_fields_together():
    table = hr.RouteTable(route({"match": {"host": "web.local", "pathPrefix": "/api", "method": "GET",
                                           "headers": {"x-a": "1"}}}))
    good = req(b"/api/1", headers=((b"X-A", b"1"),))
    assert table.match(good) is not None
    for bad in (req(b"/api/1", host=b"x.local", headers=((b"X-A", b"1"),)), req(b"/web", headers=((b"X-A", b"1"),)),
                req(b"/api/1", method=b"PUT", headers=((b"X-A", b"1"),)), req(b"/api/1")):
        assert table.match(bad) is None


def test_compiled_rule_fields():
    rule = hr.RouteTable(route({"timeoutMs": 3000, "retries": {"attempts": 2, "perTryTimeoutMs": 700, "on": ["5xx", 409]}})).rules[0]
    assert rule.timeout_s == 3.0 and rule.per_try_timeout_s == 0.7
    assert rule.retries == 2 and rule.retry_on == {"5xx", "409"}
    plain = hr.RouteTable(route({})).rules[0]
    assert plain.timeout_s is None and plain.per_try_timeout_s is None and plain.retries == 0 and not plain.retry_on


# --- splits ------------------------------------------------------------------------------

CANARY = {"split": [{"subset": {"version": "v2"}, "weight": 10}, {"subset": {"version": "v1"}, "weight": 90}]}


def test_weighted_split_follows_the_weights():
    rule = hr.RouteTable(route(CANARY)).rules[0]
    rng = random.Random(7)
    counts = Counter(choose["version"] for choose in (hr.choose_subset(rule, rng) for _ in range(20000)))
    assert 1700 < counts["v2"] < 2300 and counts["v1"] == 20000 - counts["v2"]


def test_split_boundaries_are_exact():
    rule = hr.RouteTable(route(CANARY)).rules[0]

    class Fixed:
        def __init__(self, n):
            self.n = n

        def randrange(self, stop):
            assert stop == 100
            return self.n

    assert hr.choose_subset(rule, Fixed(0)) == {"version": "v2"}
    assert hr.choose_subset(rule, Fixed(9)) == {"version": "v2"}
    assert hr.choose_subset(rule, Fixed(10)) == {"version": "v1"}
    assert hr.choose_subset(rule, Fixed(99)) == {"version": "v1"}


def test_zero_weight_target_is_never_chosen():
    rule = hr.RouteTable(route({"split": [{"subset": {"v": "old"}, "weight": 0}, {"subset": {"v": "new"}, "weight": 100}]})).rules[0]
    rng = random.Random(1)
    assert {hr.choose_subset(rule, rng)["v"] for _ in range(500)} == {"new"}


def test_no_split_means_every_endpoint():
    assert hr.choose_subset(hr.RouteTable(route({})).rules[0], random.Random(1)) == {}


def test_subset_filter():
    eps = [{"version": "v1", "zone": "a"}, {"version": "v2", "zone": "a"}, {"zone": "b"}]
    assert hr.subset_filter(eps, {"version": "v2"}) == [eps[1]]
    assert hr.subset_filter(eps, {"version": "v1", "zone": "b"}) == []
    assert hr.subset_filter(eps, {}) == eps
    specs = [pb.EndpointSpec(address="198.18.0.1", labels={"version": "v1"}),
             pb.EndpointSpec(address="198.18.0.2", labels={"version": "v2"})]
    assert [e.address for e in hr.subset_filter(specs, {"version": "v2"}, lambda e: e.labels)] == ["198.18.0.2"]


# --- header rewrite ------------------------------------------------------------------------

def test_set_headers_replaces_in_place_and_appends():
    rule = hr.RouteTable(route({"setHeaders": {"x-route": "canary", "User-Agent": "mesh"}})).rules[0]
    headers = ((b"Host", b"a"), (b"user-agent", b"curl"), (b"X-A", b"1"), (b"USER-AGENT", b"dup"))
    assert hr.apply_set_headers(headers, rule) == (
        (b"Host", b"a"), (b"user-agent", b"mesh"), (b"X-A", b"1"), (b"x-route", b"canary"))


def test_set_headers_cannot_touch_framing():
    rule = hr.RouteTable(route({"setHeaders": {"Content-Length": "0", "transfer-encoding": "chunked",
                                               "Connection": "close", "x-ok": "1"}})).rules[0]
    assert rule.set_headers == ((b"x-ok", b"1"),)
    assert set(rule.ignored_headers) == {"Content-Length", "transfer-encoding", "Connection"}
    headers = ((b"Content-Length", b"5"),)
    assert hr.apply_set_headers(headers, rule) == ((b"Content-Length", b"5"), (b"x-ok", b"1"))


def test_rewritten_request_serialises_and_parses_back():
    rule = hr.RouteTable(route({"setHeaders": {"x-route": "canary"}})).rules[0]
    request = req(b"/a")
    out = h.write_head(h.Request(request.method, request.target, request.version,
                                 hr.apply_set_headers(request.headers, rule)))
    p = h.RequestParser()
    p.receive_data(out)
    assert p.next_event().get(b"x-route") == b"canary"


# --- retries -------------------------------------------------------------------------------

@pytest.mark.parametrize("method,outcome,on,safe,expected", [
    (b"GET", 503, ["503"], False, True),
    (b"GET", 502, ["503"], False, False),
    (b"GET", 502, ["502"], False, True),
    (b"GET", 504, ["504"], False, True),
    (b"GET", 500, ["5xx"], False, True),
    (b"GET", 599, ["5xx"], False, True),
    (b"GET", 404, ["5xx"], False, False),
    (b"GET", 409, ["retriable-4xx"], False, True),
    (b"GET", 429, ["retriable-4xx"], False, False),
    (b"GET", 429, ["429"], False, True),
    (b"GET", hr.RESET, ["reset"], False, True),
    (b"GET", hr.RESET, ["5xx"], False, True),
    (b"GET", hr.RESET, ["503"], False, False),
    (b"GET", hr.CONNECT_FAILURE, ["connect-failure"], False, True),
    (b"GET", hr.CONNECT_FAILURE, ["reset"], False, False),
    (b"POST", hr.CONNECT_FAILURE, ["connect-failure"], False, True),  # never reached the upstream
    (b"POST", 503, ["503"], False, False),
    (b"POST", 503, ["503"], True, True),
    (b"PATCH", hr.RESET, ["reset"], False, False),
    (b"PUT", 503, ["5xx"], False, True),
    (b"DELETE", 503, ["5xx"], False, True),
    (b"HEAD", 503, ["5xx"], False, True),
    (b"OPTIONS", 503, ["5xx"], False, True),
    (b"TRACE", 503, ["5xx"], False, True),
    ("GET", 503, ["503"], False, True),
    (b"GET", 503, [], False, False),
])
def test_retryable(method, outcome, on, safe, expected):
    assert hr.retryable(method, outcome, on, marked_safe=safe) == expected


def test_retryable_takes_policy_messages_and_rules():
    rule = hr.RouteTable(route({"retries": {"attempts": 3, "on": ["connect-failure", 503]}})).rules[0]
    assert hr.retryable(b"GET", 503, rule) and not hr.retryable(b"GET", 502, rule)
    assert hr.retryable(b"GET", 503, rule.rule.retries)
    assert not hr.retryable(b"GET", 503, hr.RouteTable(route({})).rules[0])
    with pytest.raises(ValueError):
        hr.retryable(b"GET", "timeout", ["5xx"])


# --- faults ------------------------------------------------------------------------------

def test_fault_injection_percentages():
    fault = hr.FaultInjection(delay_ms=250, delay_percent=30, abort_status=503, abort_percent=10)
    rng = random.Random(3)
    decisions = [fault.decide(rng) for _ in range(20000)]
    delayed = sum(d.delay_s == 0.25 for d in decisions)
    aborted = sum(d.abort_status == 503 for d in decisions)
    assert 5600 < delayed < 6400 and 1700 < aborted < 2300
    assert all(d.delay_s in (0.0, 0.25) and d.abort_status in (None, 503) for d in decisions)


def test_fault_injection_extremes_and_validation():
    rng = random.Random(1)
    assert hr.FaultInjection().decide(rng) == hr.Fault(0.0, None)
    assert hr.FaultInjection(delay_ms=5, delay_percent=100, abort_status=500, abort_percent=100).decide(rng) == hr.Fault(0.005, 500)
    with pytest.raises(ValueError):
        hr.FaultInjection(abort_percent=101)
    with pytest.raises(ValueError):
        hr.FaultInjection(abort_status=99)


# --- local replies -------------------------------------------------------------------------

def parse_response(data, method=b"GET"):
    p = h.ResponseParser()
    p.expect(method)
    p.receive_data(data)
    events = []
    while True:
        e = p.next_event()
        if e is h.NEED_DATA or e is h.PAUSED:
            return events, p
        events.append(e)


def test_local_reply_503_no_healthy_endpoint():
    data = hr.local_reply(503, "no healthy endpoint for default/web:80", hr.NO_HEALTHY_ENDPOINT)
    events, p = parse_response(data)
    resp = events[0]
    assert resp.status == 503 and resp.reason == b"Service Unavailable"
    assert resp.get(b"content-type") == b"text/plain; charset=utf-8"
    assert resp.get(b"x-glasswing-reason") == b"no_healthy_endpoint"
    assert events[1] == h.Data(b"no healthy endpoint for default/web:80\n")
    assert int(resp.get(b"content-length")) == len(events[1].data)
    assert resp.get(b"connection") is None and not p.must_close


@pytest.mark.parametrize("status,closes", [(400, True), (414, True), (431, True), (501, True), (505, True),
                                           (429, False), (503, False), (504, False)])
def test_local_reply_closes_after_broken_requests(status, closes):
    events, p = parse_response(hr.local_reply(status, "x", "r"))
    assert events[0].status == status
    assert (events[0].get(b"connection") == b"close") == closes == p.must_close


def test_local_reply_to_head_has_no_body():
    data = hr.local_reply(429, "slow down", hr.RATE_LIMITED, head=True, extra_headers=[("retry-after", "1")])
    assert data.endswith(b"\r\n\r\n") and b"slow down" not in data
    events, _ = parse_response(data, b"HEAD")
    assert events[0].get(b"content-length") == b"10" and events[0].get(b"retry-after") == b"1"
    assert events[1:] == [h.EndOfMessage(())]


def test_local_reply_refuses_header_injection():
    with pytest.raises(ValueError):
        hr.local_reply(503, "x", "a\r\nset-cookie: x")


def test_error_reply_answers_a_parser_error():
    with pytest.raises(h.HttpError) as info:
        p = h.RequestParser()
        p.receive_data(b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 200 + b"\r\n")
        p.next_event()
    events, p = parse_response(hr.error_reply(info.value))
    assert events[0].status == 431 and p.must_close
    assert events[0].get(b"x-glasswing-reason") == b"http_431"
