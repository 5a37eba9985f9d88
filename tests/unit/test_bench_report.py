"""The bench's report: ratios to the baselines (HAProxy in the row's own mode), the table and
the chart."""
import pytest

from lab.bench import datapath as bench
from lab.bench import haproxy


def mk(m, t, p, mode, v, timeouts=0):
    return {"metric": m, "topology": t, "path": p, "mode": mode, "median": v, "min": v, "max": v, "runs": [v],
            "timeouts": timeouts}


def rows():
    return [mk("Gbit/s, 1 stream", "same node", "direct", "-", 10.0),
            mk("Gbit/s, 1 stream", "same node", "mesh", "tcp", 8.0),
            mk("Gbit/s, 1 stream", "same node", "haproxy", "tcp", 4.0),
            mk("Gbit/s, 1 stream", "two nodes", "direct", "-", 10.0),
            mk("Gbit/s, 1 stream", "two nodes", "mesh", "tcp", 6.0),
            mk("Gbit/s, 1 stream", "two nodes", "haproxy pair", "tcp", 5.0)]


def keep_alive():
    """Both modes in one figure: HAProxy http slower than HAProxy tcp, as in life."""
    ka = bench.KEEP_ALIVE
    return [mk(ka, "same node", "direct", "-", 100.0), mk(ka, "same node", "mesh", "tcp", 50.0),
            mk(ka, "same node", "haproxy", "tcp", 60.0), mk(ka, "same node", "mesh http", "http", 10.0),
            mk(ka, "same node", "mesh sniffed", "http", 8.0), mk(ka, "same node", "haproxy http", "http", 40.0),
            mk(ka, "two nodes", "direct", "-", 80.0), mk(ka, "two nodes", "mesh", "tcp", 30.0),
            mk(ka, "two nodes", "haproxy pair", "tcp", 30.0),
            mk(ka, "two nodes", "mesh http", "http", 5.0, timeouts=3),
            mk(ka, "two nodes", "haproxy pair http", "http", 20.0)]


def test_ratios_against_direct_and_haproxy_of_the_same_topology():
    r = {(x["topology"], x["path"]): x for x in bench.ratios(rows())}
    assert r[("same node", "mesh")]["vs_direct"] == 0.8 and r[("same node", "mesh")]["vs_haproxy"] == 2.0
    assert r[("two nodes", "mesh")]["vs_direct"] == 0.6 and r[("two nodes", "mesh")]["vs_haproxy"] == 1.2
    assert r[("two nodes", "haproxy pair")]["vs_haproxy"] == 1.0


def test_each_row_is_compared_with_haproxy_in_its_own_mode():
    r = {(x["topology"], x["path"]): x for x in bench.ratios(keep_alive())}
    assert r[("same node", "mesh")]["vs_haproxy"] == 50 / 60  # tcp against haproxy tcp
    assert r[("same node", "mesh http")]["vs_haproxy"] == 10 / 40  # http against haproxy http
    assert r[("same node", "mesh sniffed")]["vs_haproxy"] == 8 / 40
    assert r[("same node", "haproxy http")]["vs_haproxy"] == 1.0 and r[("same node", "haproxy")]["vs_haproxy"] == 1.0
    assert r[("two nodes", "mesh http")]["vs_haproxy"] == 5 / 20 and r[("two nodes", "mesh")]["vs_haproxy"] == 1.0
    assert r[("same node", "haproxy http")]["vs_direct"] == 0.4
    assert r[("same node", "direct")]["vs_haproxy"] is None  # direct has no mode


def test_an_http_row_without_an_http_haproxy_gets_no_haproxy_ratio():
    res = bench.ratios([x for x in keep_alive() if x["path"] != "haproxy pair http"])
    r = {(x["topology"], x["path"]): x for x in res}
    assert r[("two nodes", "mesh http")]["vs_haproxy"] is None  # not the tcp pair's 30
    assert r[("two nodes", "mesh")]["vs_haproxy"] == 1.0
    line = next(ln for ln in bench.table(res).splitlines() if "two nodes" in ln and "mesh http" in ln).split()
    assert line[-2:] == ["0.06", "-"]


def test_table_and_chart():
    res = bench.ratios(rows())
    t = bench.table(res).splitlines()
    assert t[0].split() == ["metric", "topology", "path", "mode", "median", "min", "max", "/direct", "/haproxy"]
    assert t[2].split()[-6:] == ["tcp", "8.00", "8.00", "8.00", "0.80", "2.00"]
    svg = bench.svg(res, "t")
    assert svg.startswith("<svg") and svg.count("<rect") == 6 and ">8.0<" in svg


def test_table_shows_the_mode_and_lists_timeouts():
    t = bench.table(bench.ratios(keep_alive())).splitlines()
    http = next(ln for ln in t if "same node" in ln and "mesh http" in ln).split()
    assert http[-6:] == ["http", "10.00", "10.00", "10.00", "0.10", "0.25"]
    assert t[-1] == "note: HTTP req/s, keep-alive, two nodes, mesh http: 3 requests timed out (wrk's 2 s) over 1 runs"
    assert sum(ln.startswith("note:") for ln in t) == 1


def test_a_topology_without_haproxy_gets_no_haproxy_ratio():
    res = bench.ratios(rows() + [mk("Gbit/s, 1 stream", "same node IPv6", "direct", "-", 10.0),
                                 mk("Gbit/s, 1 stream", "same node IPv6", "mesh", "tcp", 5.0)])
    v6 = [r for r in res if r["topology"] == "same node IPv6"]
    assert [(r["vs_direct"], r["vs_haproxy"]) for r in v6] == [(1.0, None), (0.5, None)]
    last = bench.table(res).splitlines()[-1].split()
    assert last[-2:] == ["0.50", "-"] and "IPv6" in last


def test_http_paths_run_in_the_keep_alive_figure_only():
    http = bench.Path("same node", "mesh http", "http", service="-http")
    tcp = bench.Path("same node", "mesh", "tcp")
    assert bench.measurable(bench.KEEP_ALIVE, http) and bench.measurable(bench.KEEP_ALIVE, tcp)
    assert not bench.measurable("new conn/s, HTTP close", http) and not bench.measurable("RTT p50 us, 64 B", http)
    assert not bench.measurable("RTT p50 us, 64 B", tcp._replace(topology="same node IPv6"))


def test_haproxy_listeners_in_each_mode():
    tcp = haproxy.listener("tcp", "198.18.0.1", 24080, "198.18.1.3:8080")
    http = haproxy.listener("http", "198.18.0.1", 24280, "198.18.1.3:8080")
    assert tcp == "listen p24080\n    bind 198.18.0.1:24080\n    server s 198.18.1.3:8080\n"
    assert http.splitlines()[1:4] == ["    mode http", "    option http-keep-alive", "    http-reuse always"]
    assert http.endswith("    bind 198.18.0.1:24280\n    server s 198.18.1.3:8080\n")
    cfg = haproxy.config([tcp, http])
    assert "    nbthread 1\n" in cfg and "timeout connect 5s" in cfg and "timeout server 2m" in cfg
    with pytest.raises(ValueError, match="mode"):
        haproxy.listener("udp", "198.18.0.1", 1, "x:1")


def test_haproxy_accepts_both_modes(tmp_path):
    import shutil
    import subprocess
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed")
    cfg = tmp_path / "h.cfg"
    cfg.write_text(haproxy.config([haproxy.listener("tcp", "198.18.0.1", 24080, "198.18.1.3:8080"),
                                   haproxy.listener("http", "198.18.0.1", 24280, "198.18.1.3:8080")]))
    r = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0 and "[WARNING]" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_urls_bracket_ipv6_addresses():
    from lab.bench.http_peers import url
    assert url("198.18.1.5", 80) == "http://198.18.1.5:80/"
    assert url("2001:2::c612:105", 8080, "/x") == "http://[2001:2::c612:105]:8080/x"


def test_iperf3_gbps_reads_totals_and_refuses_an_error_with_exit_0():
    from subprocess import CompletedProcess

    from lab.bench.run import iperf3_gbps
    ok = CompletedProcess([], 0, '{"end": {"sum_received": {"bits_per_second": 2.5e9}}}', "")
    assert iperf3_gbps(ok, "x") == 2.5
    bad = CompletedProcess([], 0, '{"start": {}, "end": {}, "error": "received an unknown control message"}', "")
    with pytest.raises(RuntimeError, match="unknown control message"):
        iperf3_gbps(bad, "198.19.0.10")
    with pytest.raises(RuntimeError, match="iperf3 to x failed"):
        iperf3_gbps(CompletedProcess([], 1, "", "iperf3: error - unable to connect"), "x")
