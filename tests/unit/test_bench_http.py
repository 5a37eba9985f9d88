"""Reading wrk's report, and the nginx config the benchmarks run."""
import pytest

from lab.bench import http_peers as bench_http

WRK = """Running 2s test @ http://198.18.1.3:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   220.25us  368.19us   7.05ms   97.90%
    Req/Sec   112.01k     3.17k  115.25k    85.00%
  Latency Distribution
     50%  134.00us
     75%  189.00us
     90%  300.00us
     99%    1.21ms
  222969 requests in 2.00s, 32.11MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec: 111279.19
Transfer/sec:     16.05MB
"""


def test_parse_wrk_reads_rate_percentiles_in_us_errors_and_timeouts_apart():
    r = bench_http.parse_wrk(WRK)
    assert r == {"rps": 111279.19, "p50_us": 134.0, "p99_us": 1210.0, "errors": 7, "timeouts": 2}


def test_parse_wrk_without_errors_or_distribution():
    r = bench_http.parse_wrk("Requests/sec:   5760.82\n")
    assert r == {"rps": 5760.82, "p50_us": None, "p99_us": None, "errors": 0, "timeouts": 0}


def test_parse_wrk_refuses_a_failed_run():
    with pytest.raises(ValueError, match="Requests/sec"):
        bench_http.parse_wrk("unable to connect to 198.18.1.3:8080 Connection refused\n")


def test_nginx_config_listens_where_asked_and_keeps_state_in_the_work_dir(tmp_path):
    argv = bench_http.nginx_argv(str(tmp_path), "server", "198.18.1.3")
    conf = (tmp_path / "nginx-server.conf").read_text()
    assert argv == ["nginx", "-c", str(tmp_path / "nginx-server.conf"), "-e", "stderr"]
    assert "listen 198.18.1.3:8080 backlog=4096;" in conf and 'return 200 "ok\\n";' in conf
    assert f"pid {tmp_path}/nginx-server.pid;" in conf and "access_log off;" in conf
    assert all(line.split()[-1].rstrip(";").startswith(str(tmp_path))
               for line in conf.splitlines() if "_temp_path" in line)
