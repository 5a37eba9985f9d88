"""apply/get/delete on a real embedded store in a temp dir."""
import pytest

from dataplane.store import schema as cs
from dataplane.store import config as config_store
from dataplane.errors import GlasswingError
from dataplane.store.kv_file import FileKV
from dataplane.store.registry import Registry


@pytest.fixture
def reg(tmp_path):
    return Registry(FileKV(str(tmp_path)), str(tmp_path))


def docs(tmp_path, text, name="x.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return cs.load_all([str(p)])


SVC = """apiVersion: glasswing.dev/v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{port: 80, targetPort: 8080}]
  selector: {app: orders}
---
apiVersion: glasswing.dev/v1
kind: TrafficPolicy
metadata: {name: orders, namespace: shop}
spec: {service: orders, connectTimeoutMs: 500}
"""


def test_apply_creates_then_unchanged_then_configured(reg, tmp_path):
    d = docs(tmp_path, SVC)
    assert config_store.apply(reg, d) == [("Service", "shop/orders", "created"),
                                          ("TrafficPolicy", "shop/orders", "created")]
    vip = reg.read()["services"]["shop/orders"]["vip"]
    assert vip == "198.19.0.10"
    assert [a for _k, _key, a in config_store.apply(reg, d)] == ["unchanged", "unchanged"]
    d2 = docs(tmp_path, SVC.replace("targetPort: 8080", "targetPort: 9090"), "y.yaml")
    assert [a for _k, _key, a in config_store.apply(reg, d2)] == ["configured", "unchanged"]
    doc = reg.read()
    assert doc["services"]["shop/orders"]["vip"] == vip  # kept across updates
    assert doc["services"]["shop/orders"]["ports"][0]["target"] == 9090


def test_get_round_trips_through_yaml(reg, tmp_path):
    config_store.apply(reg, docs(tmp_path, SVC))
    out = config_store.get(reg.read(), "Service", "shop/orders")
    p = tmp_path / "out.yaml"
    p.write_text(cs.dump_yaml(out))
    assert [a for _k, _key, a in config_store.apply(reg, cs.load_all([str(p)]))] == ["unchanged"]
    with pytest.raises(GlasswingError, match=r"^no Service 'shop/nope'$"):
        config_store.get(reg.read(), "Service", "shop/nope")


def test_vip_clash_refused_and_nothing_stored(reg, tmp_path):
    config_store.apply(reg, docs(tmp_path, SVC))
    before = reg.read()["revision"]
    clash = SVC.split("---")[0].replace("name: orders", "name: other") + "  vip: 198.19.0.10\n"
    with pytest.raises(GlasswingError, match=r"spec.vip: service address 198.19.0.10 is already in use"):
        config_store.apply(reg, docs(tmp_path, clash, "c.yaml"))
    assert reg.read()["revision"] == before


def test_apply_allocates_and_keeps_vip6(reg, tmp_path):
    config_store.apply(reg, docs(tmp_path, SVC))
    rec = reg.read()["services"]["shop/orders"]
    assert (rec["vip"], rec["vip6"], rec["ip_families"]) == ("198.19.0.10", "2001:2:0:ffff::c613:a", ["IPv4", "IPv6"])
    # an IPv6-only service: no IPv4 VIP, the next free IPv6 one
    six = SVC.split("---")[0].replace("name: orders", "name: six") + "  ipFamilies: [IPv6]\n"
    config_store.apply(reg, docs(tmp_path, six, "six.yaml"))
    rec6 = reg.read()["services"]["shop/six"]
    assert (rec6["vip"], rec6["vip6"]) == ("", "2001:2:0:ffff::a")
    # a record made before services had an IPv6 VIP gets one when applied again, its IPv4 VIP kept
    def forget(doc):
        doc["services"]["shop/orders"].pop("vip6")
        doc["services"]["shop/orders"].pop("ip_families")
    reg.update(forget)
    assert [a for _k, _key, a in config_store.apply(reg, docs(tmp_path, SVC))][0] == "configured"
    rec = reg.read()["services"]["shop/orders"]
    assert (rec["vip"], rec["vip6"]) == ("198.19.0.10", "2001:2:0:ffff::c613:a")


def test_vip6_clash_refused(reg, tmp_path):
    config_store.apply(reg, docs(tmp_path, SVC))
    clash = SVC.split("---")[0].replace("name: orders", "name: other") + "  vip6: 2001:2:0:ffff::c613:a\n"
    with pytest.raises(GlasswingError, match=r"c.yaml: document 1: spec.vip6: IPv6 service address "
                                             r"2001:2:0:ffff::c613:a is already in use$"):
        config_store.apply(reg, docs(tmp_path, clash, "c.yaml"))


def test_delete(reg, tmp_path):
    config_store.apply(reg, docs(tmp_path, SVC))
    assert config_store.delete(reg, "TrafficPolicy", "shop/orders") == "shop/orders"
    assert reg.read()["config"]["trafficpolicy"] == {}
    with pytest.raises(GlasswingError, match=r"^no TrafficPolicy 'shop/orders'$"):
        config_store.delete(reg, "TrafficPolicy", "shop/orders")


def test_kind_aliases():
    assert config_store.kind_of("svc") == "Service" and config_store.kind_of("Routes") == "Route"
    with pytest.raises(GlasswingError, match=r"^unknown kind 'pods'"):
        config_store.kind_of("pods")


def test_concurrent_applies_lose_nothing(reg, tmp_path):
    """Two writers that read the same state: the second retries and both land, with distinct VIPs."""
    import multiprocessing as mp
    paths = []
    for i in range(6):
        p = tmp_path / f"s{i}.yaml"
        p.write_text(SVC.split("---")[0].replace("name: orders", f"name: s{i}"))
        paths.append(str(p))

    def work(path):
        r = Registry(FileKV(str(tmp_path)), str(tmp_path))
        config_store.apply(r, cs.load_all([path]))
    procs = [mp.get_context("fork").Process(target=work, args=(p,)) for p in paths]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    services = reg.read()["services"]
    assert sorted(services) == [f"shop/s{i}" for i in range(6)]
    assert len({s["vip"] for s in services.values()}) == 6
