"""The bench's report: ratios to the baselines, the table and the chart."""
from dataplane import bench


def rows():
    mk = lambda m, t, p, v: {"metric": m, "topology": t, "path": p, "median": v, "min": v, "max": v, "runs": [v]}
    return [mk("Gbit/s, 1 stream", "same node", "direct", 10.0), mk("Gbit/s, 1 stream", "same node", "mesh", 8.0),
            mk("Gbit/s, 1 stream", "same node", "haproxy", 4.0),
            mk("Gbit/s, 1 stream", "two nodes", "direct", 10.0), mk("Gbit/s, 1 stream", "two nodes", "mesh", 6.0),
            mk("Gbit/s, 1 stream", "two nodes", "haproxy pair", 5.0)]


def test_ratios_against_direct_and_haproxy_of_the_same_topology():
    r = {(x["topology"], x["path"]): x for x in bench.ratios(rows())}
    assert r[("same node", "mesh")]["vs_direct"] == 0.8 and r[("same node", "mesh")]["vs_haproxy"] == 2.0
    assert r[("two nodes", "mesh")]["vs_direct"] == 0.6 and r[("two nodes", "mesh")]["vs_haproxy"] == 1.2
    assert r[("two nodes", "haproxy pair")]["vs_haproxy"] == 1.0


def test_table_and_chart():
    res = bench.ratios(rows())
    t = bench.table(res).splitlines()
    assert t[0].split() == ["metric", "topology", "path", "median", "min", "max", "/direct", "/haproxy"]
    assert "0.80" in t[2] and "2.00" in t[2]
    svg = bench.svg(res, "t")
    assert svg.startswith("<svg") and svg.count("<rect") == 6 and ">8.0<" in svg
