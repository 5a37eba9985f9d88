import pytest

from dataplane.dns.names import DEFAULT_SUFFIX, classify

SERVICES = {
    ("default", "web"): "198.19.0.10",
    ("default", "db"): "198.19.0.11",
    ("shop", "cart"): "198.19.0.20",
    ("shop", "web"): "198.19.0.21",
}

WEB, DB, CART, SHOPWEB = (["198.19.0.10"], ["198.19.0.11"], ["198.19.0.20"], ["198.19.0.21"])
NONE = []

TABLE = [
    # name, pod namespace, expected
    # single label: a service in the pod's namespace, else a host name for upstream
    ("web", "default", ("found", WEB)),
    ("web", "shop", ("found", SHOPWEB)),
    ("cart", "shop", ("found", CART)),
    ("cart", "default", ("outside", NONE)),
    ("localhost", "default", ("outside", NONE)),
    ("web", None, ("outside", NONE)),
    # NAME.NAMESPACE
    ("web.default", "shop", ("found", WEB)),
    ("cart.shop", "default", ("found", CART)),
    ("nope.shop", "default", ("nxdomain", NONE)),
    ("nope.default", "default", ("nxdomain", NONE)),
    ("example.com", "default", ("outside", NONE)),
    ("web.nosuchns", "default", ("outside", NONE)),
    # NAME.NAMESPACE.svc.glasswing, and the pod's search-domain form NAME.<pod ns>.svc.glasswing
    ("web.default.svc.glasswing", "shop", ("found", WEB)),
    ("cart.shop.svc.glasswing", "shop", ("found", CART)),
    ("db.default.svc.glasswing", "default", ("found", DB)),
    ("nope.default.svc.glasswing", "default", ("nxdomain", NONE)),
    ("web.nosuchns.svc.glasswing", "default", ("nxdomain", NONE)),
    # search-list expansions that do not exist fail inside the mesh
    ("cart.shop.default.svc.glasswing", "default", ("nxdomain", NONE)),
    ("example.com.default.svc.glasswing", "default", ("nxdomain", NONE)),
    ("web.svc.glasswing", "default", ("nxdomain", NONE)),
    ("a.b.c.d.svc.glasswing", "default", ("nxdomain", NONE)),
    # the zone and namespace names exist (services below them): NODATA, not NXDOMAIN
    ("svc.glasswing", "default", ("nodata", NONE)),
    ("default.svc.glasswing", "default", ("nodata", NONE)),
    ("shop.svc.glasswing", "default", ("nodata", NONE)),
    # case and the trailing dot
    ("WEB", "default", ("found", WEB)),
    ("Web.Default.SVC.Glasswing.", "shop", ("found", WEB)),
    ("web.", "default", ("found", WEB)),
    ("web", "DEFAULT", ("found", WEB)),
    ("NOPE.SHOP", "default", ("nxdomain", NONE)),
    # other names
    ("", "default", ("outside", NONE)),
    (".", "default", ("outside", NONE)),
    ("www.example.com", "default", ("outside", NONE)),
    ("web.default.svc.cluster.local", "default", ("outside", NONE)),
    ("web.default.svc", "default", ("outside", NONE)),
    ("glasswing", "default", ("outside", NONE)),
    ("notsvc.glasswing", "default", ("outside", NONE)),
    ("web.default.svc.glasswing.evil.com", "default", ("outside", NONE)),
    ("xsvc.glasswing", "default", ("outside", NONE)),
]


@pytest.mark.parametrize("name,pod_ns,expected", TABLE, ids=[f"{n or '(empty)'}@{ns}" for n, ns, _ in TABLE])
def test_classify(name, pod_ns, expected):
    assert classify(name, pod_ns, DEFAULT_SUFFIX, SERVICES) == expected


CUSTOM = [
    ("web.default.mesh.local", ("found", WEB)),
    ("web.default.svc.glasswing", ("found", WEB)),  # the default suffix keeps working
    ("nope.default.mesh.local", ("nxdomain", NONE)),
    ("nope.default.svc.glasswing", ("nxdomain", NONE)),
    ("mesh.local", ("nodata", NONE)),
    ("default.mesh.local", ("nodata", NONE)),
    ("web", ("found", WEB)),
    ("cart.shop", ("found", CART)),
    ("web.default.cluster.local", ("outside", NONE)),
]


@pytest.mark.parametrize("name,expected", CUSTOM, ids=[n for n, _ in CUSTOM])
def test_classify_custom_suffix(name, expected):
    assert classify(name, "default", "Mesh.Local.", SERVICES) == expected


def test_suffix_defaults():
    for suffix in (None, ""):
        assert classify("web.default.svc.glasswing", "default", suffix, SERVICES) == ("found", WEB)
    assert classify("web.default.svc.glasswing", "default", services=SERVICES) == ("found", WEB)


def test_no_services():
    assert classify("web", "default", DEFAULT_SUFFIX, {}) == ("outside", [])
    assert classify("web.default", "default", DEFAULT_SUFFIX, {}) == ("outside", [])
    assert classify("web.default.svc.glasswing", "default", DEFAULT_SUFFIX, None) == ("nxdomain", [])


def test_mixed_case_service_table_and_vip_lists():
    services = {("Default", "Web"): ["198.19.0.10", "198.19.0.12"]}
    assert classify("web.default", "default", DEFAULT_SUFFIX, services) == ("found", ["198.19.0.10", "198.19.0.12"])


def test_returns_fresh_lists():
    kind, ips = classify("web", "default", DEFAULT_SUFFIX, SERVICES)
    ips.append("x")
    assert classify("web", "default", DEFAULT_SUFFIX, SERVICES) == ("found", WEB)


def test_prebuilt_names_answer_exactly_like_the_mapping():
    from dataplane.dns.names import Names
    services = {("default", "web"): "198.19.0.10", ("shop", "Orders"): "198.19.0.11"}
    names = Names(services)
    for q in ("web", "web.default", "web.default.svc.glasswing", "orders.shop", "ORDERS.shop.svc.glasswing.",
              "nope.shop", "nope.default.svc.glasswing", "example.org", "svc.glasswing", "shop.svc.glasswing", ""):
        for ns in ("default", "shop"):
            assert classify(q, ns, None, names) == classify(q, ns, None, services), (q, ns)
