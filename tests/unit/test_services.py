"""dataplane.services on an in-memory store document (no kernel, no root)."""
import copy

import pytest

from dataplane import services as svcs
from dataplane.errors import GlasswingError
from dataplane.store import _empty


def _pod(ip, labels=None, node="n1"):
    return {"node": node, "ip": ip, "labels": labels or {}, "fail_mode": "open",
            "netns": "gw-test-pod", "cgroup": "/sys/fs/cgroup/x", "host_if": "gwx", "pod_if": "eth0"}


@pytest.fixture
def doc():
    d = _empty()
    d["pods"] = {
        "web1": _pod("198.18.1.2", {"app": "web", "tier": "front"}),
        "web2": _pod("198.18.2.2", {"app": "web"}, node="n2"),
        "db": _pod("198.18.1.3", {"app": "db", "tier": "back"}),
    }
    return d


def _fails(doc, message, *args, **kw):
    """add_service raises exactly `message` and leaves the document as it was."""
    before = copy.deepcopy(doc)
    with pytest.raises(GlasswingError) as e:
        svcs.add_service(doc, *args, **kw)
    assert str(e.value) == message
    assert doc == before


def test_add_service_record(doc):
    rec = svcs.add_service(doc, "web", ["80:8080", "443"], endpoints=["web1", "web2:9090"])
    assert rec == {"id": 1, "vip": "198.19.0.10",
                   "ports": [{"port": 80, "target": 8080}, {"port": 443, "target": 443}],
                   "endpoints": [{"pod": "web1", "port": None}, {"pod": "web2", "port": 9090}],
                   "selector": None}
    assert doc["services"]["web"] is rec
    assert doc["next_service_id"] == 2


def test_vip_allocation_starts_at_10_and_skips_taken(doc):
    assert svcs.add_service(doc, "a", ["80"])["vip"] == "198.19.0.10"
    assert svcs.add_service(doc, "b", ["80"], vip="198.19.0.12")["vip"] == "198.19.0.12"
    assert svcs.add_service(doc, "c", ["80"])["vip"] == "198.19.0.11"
    assert svcs.add_service(doc, "d", ["80"])["vip"] == "198.19.0.13"
    assert [doc["services"][n]["id"] for n in "abcd"] == [1, 2, 3, 4]


def test_vip_freed_by_remove_is_reused_but_id_is_not(doc):
    svcs.add_service(doc, "a", ["80"])
    svcs.add_service(doc, "b", ["80"])
    svcs.remove_service(doc, "a")
    rec = svcs.add_service(doc, "c", ["80"])
    assert (rec["vip"], rec["id"]) == ("198.19.0.10", 3)


def test_explicit_vip_below_10_is_allowed(doc):
    assert svcs.add_service(doc, "a", ["80"], vip="198.19.0.5")["vip"] == "198.19.0.5"


def test_duplicate_name(doc):
    svcs.add_service(doc, "web", ["80"])
    _fails(doc, "service 'web' already exists", "web", ["81"])


def test_duplicate_vip(doc):
    svcs.add_service(doc, "a", ["80"])
    _fails(doc, "service address 198.19.0.10 is already in use", "b", ["80"], vip="198.19.0.10")


@pytest.mark.parametrize("vip, message", [
    ("10.0.0.1", "service address 10.0.0.1 is outside 198.19.0.0/16"),
    ("198.18.0.10", "service address 198.18.0.10 is outside 198.19.0.0/16"),
    ("198.20.0.1", "service address 198.20.0.1 is outside 198.19.0.0/16"),
    ("198.19.255.255", "service address 198.19.255.255 is the network or broadcast address of 198.19.0.0/16"),
    ("nope", "invalid service address 'nope': not an IPv4 address"),
])
def test_vip_outside_service_range(doc, vip, message):
    _fails(doc, message, "a", ["80"], vip=vip)


def test_invalid_service_name(doc):
    _fails(doc, "invalid service name 'Web': use 1-40 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit", "Web", ["80"])


def test_unknown_pod_endpoint(doc):
    _fails(doc, "unknown pod 'nope' in endpoint 'nope:80'", "a", ["80"], endpoints=["web1", "nope:80"])


def test_duplicate_endpoint(doc):
    _fails(doc, "endpoint 'web1' given twice", "a", ["80"], endpoints=["web1", "web1"])


def test_invalid_endpoint_port(doc):
    _fails(doc, "invalid endpoint port 70000: out of range 1-65535", "a", ["80"], endpoints=["web1:70000"])
    _fails(doc, "invalid endpoint port 'x': not a number", "a", ["80"], endpoints=["web1:x"])


def test_endpoints_and_selector_together(doc):
    _fails(doc, "give either --endpoint or --selector, not both", "a", ["80"],
           endpoints=["web1"], selector={"app": "web"})


def test_no_ports(doc):
    _fails(doc, "service 'a' needs at least one --port", "a", [])


def test_same_port_twice(doc):
    _fails(doc, "service port 80 given twice", "a", ["80:8080", "80:9090"])


@pytest.mark.parametrize("spec, message", [
    ("0", "invalid service port 0: out of range 1-65535"),
    ("65536", "invalid service port 65536: out of range 1-65535"),
    ("80:0", "invalid target port 0: out of range 1-65535"),
    ("80:65536", "invalid target port 65536: out of range 1-65535"),
    ("http", "invalid service port 'http': not a number"),
])
def test_port_bounds_rejected(doc, spec, message):
    _fails(doc, message, "a", [spec])


def test_port_bounds_accepted(doc):
    rec = svcs.add_service(doc, "a", ["1", "65535:1"])
    assert rec["ports"] == [{"port": 1, "target": 1}, {"port": 65535, "target": 1}]


def test_selector_matches_every_label(doc):
    svc = svcs.add_service(doc, "web", ["80:8080"], selector={"app": "web"})
    m = svc["ports"][0]
    assert svcs.endpoints(doc, svc, m) == [("web1", doc["pods"]["web1"], 8080),
                                           ("web2", doc["pods"]["web2"], 8080)]
    front = svcs.add_service(doc, "front", ["80"], selector={"app": "web", "tier": "front"})
    assert [name for name, _, _ in svcs.endpoints(doc, front, front["ports"][0])] == ["web1"]
    none = svcs.add_service(doc, "none", ["80"], selector={"app": "cache"})
    assert svcs.endpoints(doc, none, none["ports"][0]) == []


def test_selector_follows_pods_added_later(doc):
    svc = svcs.add_service(doc, "db", ["5432"], selector={"app": "db"})
    doc["pods"]["db2"] = _pod("198.18.1.4", {"app": "db"})
    assert [n for n, _, _ in svcs.endpoints(doc, svc, svc["ports"][0])] == ["db", "db2"]


def test_endpoint_port_overrides_target(doc):
    svc = svcs.add_service(doc, "web", ["80:8080", "443"], endpoints=["web1", "web2:9090"])
    http, https = svc["ports"]
    assert [(n, p) for n, _, p in svcs.endpoints(doc, svc, http)] == [("web1", 8080), ("web2", 9090)]
    assert [(n, p) for n, _, p in svcs.endpoints(doc, svc, https)] == [("web1", 443), ("web2", 9090)]


def test_endpoints_skip_pods_that_are_gone(doc):
    svc = svcs.add_service(doc, "web", ["80"], endpoints=["web1", "web2"])
    del doc["pods"]["web1"]
    assert [n for n, _, _ in svcs.endpoints(doc, svc, svc["ports"][0])] == ["web2"]


def test_remove_service(doc):
    rec = svcs.add_service(doc, "web", ["80"])
    assert svcs.remove_service(doc, "web") == rec
    assert doc["services"] == {}
    with pytest.raises(GlasswingError) as e:
        svcs.remove_service(doc, "web")
    assert str(e.value) == "unknown service 'web' (see `glasswing service list`)"


def test_find_by_vip(doc):
    web = svcs.add_service(doc, "web", ["80:8080", "443"])
    db = svcs.add_service(doc, "db", ["5432"])
    assert svcs.find_by_vip(doc, "198.19.0.10", 80) == ("web", web, {"port": 80, "target": 8080})
    assert svcs.find_by_vip(doc, "198.19.0.10", 443) == ("web", web, {"port": 443, "target": 443})
    assert svcs.find_by_vip(doc, "198.19.0.11", 5432) == ("db", db, {"port": 5432, "target": 5432})
    assert svcs.find_by_vip(doc, "198.19.0.10", 8080) is None  # a target port is not a service port
    assert svcs.find_by_vip(doc, "198.19.0.11", 80) is None
    assert svcs.find_by_vip(doc, "198.19.0.99", 80) is None


def test_vip_int():
    assert svcs.vip_int("198.19.0.10") == (198 << 24) | (19 << 16) | 10
