"""The bench's report: ratios to the baselines, the table and the chart."""
from lab.bench import datapath as bench


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


def test_a_topology_without_haproxy_gets_no_haproxy_ratio():
    mk = lambda p, v: {"metric": "Gbit/s, 1 stream", "topology": "same node IPv6", "path": p, "median": v,
                       "min": v, "max": v, "runs": [v]}
    res = bench.ratios(rows() + [mk("direct", 10.0), mk("mesh", 5.0)])
    v6 = [r for r in res if r["topology"] == "same node IPv6"]
    assert [(r["vs_direct"], r["vs_haproxy"]) for r in v6] == [(1.0, None), (0.5, None)]
    last = bench.table(res).splitlines()[-1].split()
    assert last[-2:] == ["0.50", "-"] and "IPv6" in last


def test_urls_bracket_ipv6_addresses():
    from lab.bench.http_peers import url
    assert url("198.18.1.5", 80) == "http://198.18.1.5:80/"
    assert url("2001:2::c612:105", 8080, "/x") == "http://[2001:2::c612:105]:8080/x"


def test_iperf3_gbps_reads_totals_and_refuses_an_error_with_exit_0():
    from subprocess import CompletedProcess

    import pytest

    from lab.bench.run import iperf3_gbps
    ok = CompletedProcess([], 0, '{"end": {"sum_received": {"bits_per_second": 2.5e9}}}', "")
    assert iperf3_gbps(ok, "x") == 2.5
    bad = CompletedProcess([], 0, '{"start": {}, "end": {}, "error": "received an unknown control message"}', "")
    with pytest.raises(RuntimeError, match="unknown control message"):
        iperf3_gbps(bad, "198.19.0.10")
    with pytest.raises(RuntimeError, match="iperf3 to x failed"):
        iperf3_gbps(CompletedProcess([], 1, "", "iperf3: error - unable to connect"), "x")
