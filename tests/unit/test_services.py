"""dataplane.store.services on an in-memory store document (no kernel, no root)."""
import copy

import pytest

from dataplane.store import services as svcs
from dataplane.errors import GlasswingError
from dataplane.store.catalog import Catalog
from dataplane.store import registry
from dataplane.store.registry import _empty


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


def _ep(pod, port=None):
    return {"pod": pod, "port": port, "address": None, "weight": 1, "zone": "", "labels": {}}


def _port(port, target, protocol=""):
    return {"port": port, "target": target, "protocol": protocol, "name": ""}


def test_add_service_record(doc):
    rec = svcs.add_service(doc, "web", ["80:8080", "443"], endpoints=["web1", "web2:9090"])
    assert rec == {"namespace": "default", "name": "web", "labels": {}, "vip": "198.19.0.10",
                   "vip6": "2001:2:0:ffff::c613:a", "ip_families": ["IPv4", "IPv6"], "ports": [_port(80, 8080), _port(443, 443)],
                   "endpoints": [_ep("web1"), _ep("web2", 9090)],
                   "selector": None, "health_check": None}
    assert doc["services"] == {"default/web": rec}
    assert doc["services"]["default/web"] is rec


def test_add_service_in_a_namespace(doc):
    web = svcs.add_service(doc, "web", ["80"])
    shop = svcs.add_service(doc, "shop/web", ["80"], selector={"app": "web"})
    assert (shop["namespace"], shop["name"], shop["vip"]) == ("shop", "web", "198.19.0.11")
    assert doc["services"] == {"default/web": web, "shop/web": shop}
    assert svcs.get_service(doc, "shop/web") is shop
    assert svcs.get_service(doc, "web") is web
    assert svcs.get_service(doc, "default/web") is web
    _fails(doc, "service 'shop/web' already exists", "shop/web", ["81"])
    _fails(doc, "service 'default/web' already exists", "default/web", ["81"])


@pytest.mark.parametrize("name, key", [
    ("a", ("default", "a")),
    ("default/a", ("default", "a")),
    ("ns/a", ("ns", "a")),
    ("shop-1/orders-2", ("shop-1", "orders-2")),
])
def test_split_name_and_key_of(name, key):
    assert svcs.split_name(name) == key
    assert svcs.key_of(name) == "/".join(key)


_RULE = "use 1-40 lowercase letters, digits and '-', starting and ending with a letter or digit"


@pytest.mark.parametrize("name, message", [
    ("Shop/a", f"invalid namespace name 'Shop': {_RULE}"),
    ("/a", f"invalid namespace name '': {_RULE}"),
    ("a/b/c", f"invalid namespace name 'a/b': {_RULE}"),
    ("-ns/a", f"invalid namespace name '-ns': {_RULE}"),
    ("ns/A", f"invalid service name 'A': {_RULE}"),
    ("ns/", f"invalid service name '': {_RULE}"),
    ("", f"invalid service name '': {_RULE}"),
    ("a_b", f"invalid service name 'a_b': {_RULE}"),
    ("ns/" + "a" * 41, f"invalid service name '{'a' * 41}': {_RULE}"),
])
def test_split_name_and_key_of_reject(doc, name, message):
    for fn in (svcs.split_name, svcs.key_of):
        with pytest.raises(GlasswingError) as e:
            fn(name)
        assert str(e.value) == message
    _fails(doc, message, name, ["80"])


def test_vip_allocation_starts_at_10_and_skips_taken(doc):
    assert svcs.add_service(doc, "a", ["80"])["vip"] == "198.19.0.10"
    assert svcs.add_service(doc, "b", ["80"], vip="198.19.0.12")["vip"] == "198.19.0.12"
    assert svcs.add_service(doc, "c", ["80"])["vip"] == "198.19.0.11"
    assert svcs.add_service(doc, "d", ["80"])["vip"] == "198.19.0.13"
    assert [doc["services"][f"default/{n}"]["vip"] for n in "abcd"] == \
        ["198.19.0.10", "198.19.0.12", "198.19.0.11", "198.19.0.13"]


def test_vip_freed_by_remove_is_reused(doc):
    svcs.add_service(doc, "a", ["80"])
    svcs.add_service(doc, "b", ["80"])
    svcs.remove_service(doc, "a")
    rec = svcs.add_service(doc, "c", ["80"])
    assert rec["vip"] == "198.19.0.10"
    assert sorted(doc["services"]) == ["default/b", "default/c"]


def test_explicit_vip_below_10_is_allowed(doc):
    assert svcs.add_service(doc, "a", ["80"], vip="198.19.0.5")["vip"] == "198.19.0.5"


def test_vip6_pairs_with_the_ipv4_vip(doc):
    a = svcs.add_service(doc, "a", ["80"])
    assert (a["vip"], a["vip6"], a["ip_families"]) == ("198.19.0.10", "2001:2:0:ffff::c613:a", ["IPv4", "IPv6"])
    b = svcs.add_service(doc, "b", ["80"], vip="198.19.1.2")
    assert b["vip6"] == "2001:2:0:ffff::c613:102"


def test_vip6_given_is_checked_and_canonical(doc):
    rec = svcs.add_service(doc, "a", ["80"], vip6="2001:2:0:FFFF:0::0:77")
    assert rec["vip6"] == "2001:2:0:ffff::77" and rec["vip"] == "198.19.0.10"
    _fails(doc, "IPv6 service address 2001:2:0:ffff::77 is already in use", "b", ["80"], vip6="2001:2:0:ffff::77")
    _fails(doc, "IPv6 service address 2001:2:0:fffe::1 is outside 2001:2:0:ffff::/64", "b", ["80"],
           vip6="2001:2:0:fffe::1")
    _fails(doc, "invalid IPv6 service address '198.19.0.1': not an IPv6 address", "b", ["80"], vip6="198.19.0.1")


def test_paired_vip6_taken_falls_back_to_next_free(doc):
    svcs.add_service(doc, "a", ["80"], vip6="2001:2:0:ffff::c613:a", ip_family="ipv6")  # 198.19.0.10's pair
    b = svcs.add_service(doc, "b", ["80"], vip="198.19.0.10")
    assert b["vip6"] == "2001:2:0:ffff::a"


def test_ip_families(doc):
    four = svcs.add_service(doc, "four", ["80"], ip_family="ipv4")
    assert (four["vip"], four["vip6"], four["ip_families"]) == ("198.19.0.10", "", ["IPv4"])
    six = svcs.add_service(doc, "six", ["80"], ip_family="ipv6")
    assert (six["vip"], six["vip6"], six["ip_families"]) == ("", "2001:2:0:ffff::a", ["IPv6"])
    six2 = svcs.add_service(doc, "six2", ["80"], ip_family="ipv6")
    assert six2["vip6"] == "2001:2:0:ffff::b"
    assert svcs.add_service(doc, "dual", ["80"], ip_family="dual")["ip_families"] == ["IPv4", "IPv6"]
    _fails(doc, "service address 198.19.0.50 given, but the service has no IPv4 (IP families IPv6)",
           "x", ["80"], vip="198.19.0.50", ip_family="ipv6")
    _fails(doc, "IPv6 service address 2001:2:0:ffff::50 given, but the service has no IPv6 (IP families IPv4)",
           "x", ["80"], vip6="2001:2:0:ffff::50", ip_family="ipv4")
    _fails(doc, "invalid IP family 'IPv6': use dual, ipv4, ipv6", "x", ["80"], ip_family="IPv6")


def test_duplicate_name(doc):
    svcs.add_service(doc, "web", ["80"])
    _fails(doc, "service 'web' already exists", "web", ["81"])


def test_duplicate_vip(doc):
    svcs.add_service(doc, "a", ["80"])
    _fails(doc, "service address 198.19.0.10 is already in use", "b", ["80"], vip="198.19.0.10")
    _fails(doc, "service address 198.19.0.10 is already in use", "shop/b", ["80"], vip="198.19.0.10")


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
    assert rec["ports"] == [_port(1, 1), _port(65535, 1)]


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


def test_remove_service_in_a_namespace(doc):
    web = svcs.add_service(doc, "web", ["80"])
    shop = svcs.add_service(doc, "shop/web", ["80"])
    with pytest.raises(GlasswingError) as e:
        svcs.remove_service(doc, "other/web")
    assert str(e.value) == "unknown service 'other/web' (see `glasswing service list`)"
    assert svcs.remove_service(doc, "shop/web") is shop
    assert doc["services"] == {"default/web": web}
    assert svcs.remove_service(doc, "default/web") is web
    assert doc["services"] == {}


def test_catalog_finds_service_port_by_vip(doc):
    # find_by_vip is gone; the forwarder looks a VIP:port up in its Catalog instead.
    svcs.add_service(doc, "web", ["80:8080", "443"])
    svcs.add_service(doc, "shop/db", ["5432"])
    cat = Catalog(registry.snapshot(doc))

    def found(vip, port):
        sp = cat.service_port(vip, port)
        return sp and (sp.service, sp.port, sp.target)
    assert found("198.19.0.10", 80) == ("default/web", 80, 8080)
    assert found("198.19.0.10", 443) == ("default/web", 443, 443)
    assert found("198.19.0.11", 5432) == ("shop/db", 5432, 5432)
    assert found("198.19.0.10", 8080) is None  # a target port is not a service port
    assert found("198.19.0.11", 80) is None
    assert found("198.19.0.99", 80) is None
    assert found("2001:2:0:ffff::c613:a", 443) == ("default/web", 443, 443)  # the IPv6 VIP too


def test_catalog_dns_names_hold_the_vips_a_service_has(doc):
    from dataplane.dns.names import classify
    svcs.add_service(doc, "dual", ["80"])
    svcs.add_service(doc, "four", ["80"], ip_family="ipv4")
    svcs.add_service(doc, "six", ["80"], ip_family="ipv6")
    names = Catalog(registry.snapshot(doc)).dns_names
    assert classify("dual", "default", None, names) == ("found", ["198.19.0.10", "2001:2:0:ffff::c613:a"])
    assert classify("four.default", "x", None, names) == ("found", ["198.19.0.11"])
    assert classify("six.default.svc.glasswing", "x", None, names) == ("found", ["2001:2:0:ffff::a"])


def test_vip_int():
    assert svcs.vip_int("198.19.0.10") == (198 << 24) | (19 << 16) | 10


def test_port_protocol_suffix(doc):
    rec = svcs.add_service(doc, "web", ["80:8080/http", "81/tcp", "82"], endpoints=["web1"])
    assert rec["ports"] == [_port(80, 8080, "http"), _port(81, 81, "tcp"), _port(82, 82)]


def test_unknown_port_protocol_is_refused(doc):
    with pytest.raises(GlasswingError, match="port protocol must be one of tcp, http, not 'udp'"):
        svcs.add_service(doc, "web", ["80/udp"], endpoints=["web1"])
