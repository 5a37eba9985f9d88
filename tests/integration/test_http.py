"""HTTP/1.1 at the forwarder, end to end (issue 4, parts 3-5): real servers in pods
(peers.py httpd, nginx from Debian, PostgreSQL), routes and traffic policies applied with
`glasswing apply` while the forwarders run, and bad input on the wire.

    n1 (forwarder)                          n2 (forwarder)
      client                                  h2 app=h version=v1
      h1 app=h version=v1                     h3 app=h version=v2
                                              pg (postgres on 5432)
    each h pod: peers.py httpd on 8080, nginx on 8081 (answers its pod name)
    services:
      web    80 -> 8080        undeclared: sniffed            selector app=h
      webh   80 -> 8080/http   declared HTTP                  selector app=h
      nginx  80 -> 8081/http   Route: retries on reset etc.   selector app=h
      canary 80 -> 8080        Route: 90 v1 / 10 v2           selector app=h
      slow   80 -> 8080/http   per-try timeout + outlier      selector app=h
      limited 80 -> 8080/http  rate limit 1/s, burst 5        h1
      capped 80 -> 8080/http   max_connections 3              h1
      pg     5432              undeclared (client-first, binary) pg

The long-poll test waits 60 s on purpose (marked `slow`: `-m "not slow"` leaves it out).
"""
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from lab.cluster import Lab
from lab.bench.http_peers import nginx_argv
from tests.support import leaks
from tests.support.mesh import PEERS, glasswing, wait_listening, wait_synced
from tests.support.need import need_tools


H_PODS = ("h1", "h2", "h3")
PG_BIN = "/usr/lib/postgresql/{}/bin"


def pg_bin():
    root = "/usr/lib/postgresql"
    versions = sorted(os.listdir(root), key=int) if os.path.isdir(root) else []
    return PG_BIN.format(versions[-1]) if versions else None


def start_nginx(lab, pod):
    argv = nginx_argv(lab.dir, pod, lab.ips[pod], 8081, body=f"{pod}\n",
                      extra=f"add_header x-pod {pod} always; ")
    lab.nginx[pod] = lab.spawn(pod, argv)
    wait_listening(lab, "client", lab.ips[pod], 8081)


def start_postgres(lab):
    """initdb and postgres as the postgres user (postgres refuses root) in pod pg, trusting
    every client: the test is about the mesh carrying the protocol, not about auth."""
    data = lab.pgdir = tempfile.mkdtemp(prefix="gwpg-")
    pw = pwd.getpwnam("postgres")
    os.chown(data, pw.pw_uid, pw.pw_gid)
    bin_ = pg_bin()
    r = subprocess.run(["runuser", "-u", "postgres", "--", f"{bin_}/initdb", "-D", f"{data}/db",
                        "-A", "trust", "-U", "postgres"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with open(f"{data}/db/pg_hba.conf", "a") as f:  # the mesh's 127.0.0.6 and anyone else
        f.write("host all all 0.0.0.0/0 trust\n")
    lab.spawn("pg", ["runuser", "-u", "postgres", "--", f"{bin_}/postgres", "-D", f"{data}/db",
                     "-c", f"listen_addresses={lab.ips['pg']}", "-c", f"unix_socket_directories={data}",
                     "-p", "5432"])
    wait_listening(lab, "client", lab.ips["pg"], 5432, timeout=30)


@pytest.fixture(scope="module")
def hm(kernel_before):
    need_tools("nginx", "psql", "runuser")
    if pg_bin() is None:
        pytest.skip("PostgreSQL is not installed (scripts/install.sh installs it)")
    lab = Lab("gwhttp")
    lab.pgdir = None
    try:
        lab.node("n1")
        lab.node("n2")
        lab.pod("client", "n1")
        lab.pod("h1", "n1", labels={"app": "h", "version": "v1"})
        lab.pod("h2", "n2", labels={"app": "h", "version": "v1"})
        lab.pod("h3", "n2", labels={"app": "h", "version": "v2"})
        lab.pod("pg", "n2")
        lab.service("web", ports=["80:8080"], selector={"app": "h"})
        lab.service("webh", ports=["80:8080/http"], selector={"app": "h"})
        lab.service("nginx", ports=["80:8081/http"], selector={"app": "h"})
        lab.service("canary", ports=["80:8080"], selector={"app": "h"})
        lab.service("slow", ports=["80:8080/http"], selector={"app": "h"})
        lab.service("limited", ports=["80:8080/http"], endpoints=["h1"])
        lab.service("capped", ports=["80:8080/http"], endpoints=["h1"])
        lab.service("pg", ports=["5432"], endpoints=["pg"])
        lab.up("n1")
        lab.up("n2")
        doc = lab.doc
        lab.vips = {s["name"]: s["vip"] for s in doc["services"].values()}
        lab.ips = {n: p["ip"] for n, p in doc["pods"].items()}
        lab.nginx = {}
        for pod in H_PODS:
            lab.spawn(pod, [sys.executable, PEERS, "httpd", pod, "8080"])
            wait_listening(lab, "client", lab.ips[pod], 8080)
            start_nginx(lab, pod)
        start_postgres(lab)
        yield lab
    finally:
        lab.release()
        if lab.pgdir:
            shutil.rmtree(lab.pgdir, ignore_errors=True)
        leaks.assert_clean(kernel_before, leaks.snapshot())


def peer(lab, *args, timeout=120, input=None):
    r = lab.run("client", [sys.executable, PEERS, *map(str, args)], timeout=timeout, input=input)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def apply(lab, kind, name, spec):
    glasswing(lab, "apply", "-f", "-",
              stdin=f"apiVersion: glasswing.dev/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n")
    wait_synced(lab)


def http_status(lab, node="n1"):
    return json.loads(glasswing(lab, "--node", node, "status", "--json"))


def curl(lab, *args):
    r = lab.run("client", ["curl", "-sS", "-m", "20", *args])
    assert r.returncode == 0, r.stderr
    return r.stdout


# ------------------------------------------------------------ protocol handling


def test_sniffed_port_serves_http_with_keepalive_and_trace_headers(hm):
    before = http_status(hm)
    out = curl(hm, "-v", f"http://{hm.vips['web']}/", f"http://{hm.vips['web']}/",
               f"http://{hm.vips['web']}/")
    assert out.count('"pod"') == 3
    after = http_status(hm)
    assert after["stats"]["sniffed_http"] - before["stats"]["sniffed_http"] == 1  # one connection
    assert after["http"]["requests"] - before["http"]["requests"] == 3
    head = curl(hm, "-sS", "-D", "-", "-o", "/dev/null", f"http://{hm.vips['web']}/")
    assert "x-seen-traceparent: 00-" in head and "x-seen-x-request-id:" in head
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    head = curl(hm, "-D", "-", "-o", "/dev/null", "-H", f"traceparent: {tp}", "-H", "x-request-id: abc",
                f"http://{hm.vips['web']}/")
    assert "x-seen-x-request-id: abc" in head and f"x-seen-traceparent: {tp}" in head


def test_chunked_and_streamed_bodies_pass_through(hm):
    body = curl(hm, f"http://{hm.vips['webh']}/chunked?n=50")
    assert len(body) == 50_000 and body[:1000] == "A" * 1000
    data = os.urandom(300_000).hex()  # 600 kB: longer than the replay buffer, streamed
    out = hm.run("client", ["curl", "-sS", "-m", "20", "-H", "Transfer-Encoding: chunked",
                            "--data-binary", "@-", f"http://{hm.vips['webh']}/echo"], input=data)
    assert out.returncode == 0 and out.stdout == data


def test_postgres_works_through_a_port_with_no_declared_protocol(hm):
    before = http_status(hm)["stats"]
    r = hm.run("client", ["psql", "-h", hm.vips["pg"], "-p", "5432", "-U", "postgres", "-At",
                          "-c", "select 40 + 2", "-c", "create table t (x int)",
                          "-c", "insert into t select generate_series(1, 1000)",
                          "-c", "select sum(x) from t"], timeout=60,
               env={"PATH": os.environ["PATH"], "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["42", "CREATE", "TABLE", "INSERT", "0", "1000", "500500"]
    after = http_status(hm)["stats"]
    assert after["sniffed_opaque"] > before["sniffed_opaque"]  # a binary first byte: opaque at once, relayed raw


def test_websocket_stays_open_through_the_mesh(hm):
    out = peer(hm, "ws", hm.vips["web"], 80, 20)
    assert out["status"] == "101" and out["accept_ok"], out
    assert out.get("error") is None and out["echoed"] >= 20 and out["seconds"] >= 20, out
    assert http_status(hm)["http"]["switched"] >= 1


@pytest.mark.slow
def test_long_poll_of_60_seconds_stays_open(hm):
    """Slow on purpose: one request held by the server for 60 s."""
    out = peer(hm, "longpoll", hm.vips["webh"], 80, 60, timeout=150)
    assert out.get("status") == 200 and out["body"] == "event" and out["seconds"] >= 60, out


# ------------------------------------------------------------ routing and resilience


def test_killing_one_of_three_endpoints_loses_no_request(hm):
    """Retries take each failed request elsewhere; outlier detection then takes the dead
    endpoint out, so that retries stay within the retry budget (20% of requests)."""
    apply(hm, "TrafficPolicy", "nginx", "{service: nginx, outlierDetection: {consecutiveFailures: 3, "
                                        "baseEjectionMs: 30000, maxEjectionPercent: 50}}")
    apply(hm, "Route", "nginx", "{service: nginx, rules: [{retries: {attempts: 3, perTryTimeoutMs: 2000, "
                                "on: [connect-failure, reset, 5xx]}}]}")
    proc = hm.spawn("client", [sys.executable, PEERS, "gets", hm.vips["nginx"], "80", "1500", "/", "2"],
                    stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the input: the requests under way when h3 dies
    victim = hm.nginx.pop("h3")
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    out, _ = proc.communicate(timeout=120)
    res = json.loads(out)
    assert res["errors"] == [] and res["statuses"] == {"200": 1500}, res
    assert res["connections"] == 1, res  # the client's keep-alive connection survived
    assert set(res["pods"]) == {"h1", "h2", "h3"}, res  # h3 served until it died
    assert http_status(hm)["stats"]["outlier_ejections"] >= 1
    start_nginx(hm, "h3")
    glasswing(hm, "delete", "trafficpolicy", "nginx")


def test_canary_split_90_10_within_3_points_over_2000_requests(hm):
    apply(hm, "Route", "canary", "{service: canary, rules: [{split: [{subset: {version: v1}, weight: 90}, "
                                 "{subset: {version: v2}, weight: 10}]}]}")
    res = peer(hm, "gets", hm.vips["canary"], 80, 2000)
    assert res["errors"] == [] and res["statuses"] == {"200": 2000}, res
    v2 = res["pods"].get("h3", 0) / 2000 * 100
    assert abs(v2 - 10) <= 3, res
    assert res["pods"].get("h1", 0) and res["pods"].get("h2", 0), res


def test_route_changes_apply_without_restart(hm):
    pid = http_status(hm)["pid"]
    apply(hm, "Route", "webh", "{service: webh, rules: [{match: {pathPrefix: /status}, "
                               "fault: {abortPercent: 100, abortStatus: 418}}, {}]}")
    res = peer(hm, "gets", hm.vips["webh"], 80, 20, "/status?code=200")
    assert res["statuses"] == {"418": 20} and res["pods"] == {"fault_abort": 20}, res
    assert peer(hm, "gets", hm.vips["webh"], 80, 5)["statuses"] == {"200": 5}  # the other rule
    apply(hm, "Route", "webh", "{service: webh, rules: [{match: {pathPrefix: /}, "
                               "setHeaders: {x-canary: yes}}]}")
    head = curl(hm, "-D", "-", "-o", "/dev/null", f"http://{hm.vips['webh']}/")
    assert "x-seen-x-canary: yes" in head, head
    glasswing(hm, "delete", "route", "webh")
    assert http_status(hm)["pid"] == pid


def test_slow_endpoint_is_ejected_and_comes_back(hm):
    apply(hm, "TrafficPolicy", "slow", "{service: slow, outlierDetection: {consecutiveFailures: 2, "
                                       "baseEjectionMs: 4000, maxEjectionPercent: 50}}")
    apply(hm, "Route", "slow", "{service: slow, rules: [{retries: {attempts: 2, perTryTimeoutMs: 300, "
                               "on: [5xx, reset, connect-failure]}}]}")
    slow_url = f"http://{hm.ips['h3']}:8080/delay?ms=1000"
    try:
        assert curl(hm, "-X", "POST", slow_url) == "ok"
        before = http_status(hm)
        res = peer(hm, "gets", hm.vips["slow"], 80, 30)
        assert res["statuses"] == {"200": 30} and "h3" not in res["pods"], res
        after = http_status(hm)
        timeouts = after["http"].get("upstream_timeout", 0) - before["http"].get("upstream_timeout", 0)
        assert after["stats"]["outlier_ejections"] > before["stats"]["outlier_ejections"]
        assert 2 <= timeouts <= 4, timeouts  # ejected after 2 timeouts, not tried again (10 else)
    finally:
        curl(hm, "-X", "POST", f"http://{hm.ips['h3']}:8080/delay?ms=0")
    time.sleep(4.5)  # the input: the ejection's time runs out (requests would feed it)
    res = peer(hm, "gets", hm.vips["slow"], 80, 30)
    assert res["statuses"] == {"200": 30} and res["pods"].get("h3", 0) >= 5, res


def test_rate_limit_answers_429_past_the_burst(hm):
    apply(hm, "TrafficPolicy", "limited", "{service: limited, rateLimit: {tokensPerSecond: 1, burst: 5}}")
    time.sleep(5)  # the input: time for a full bucket
    t0 = time.monotonic()
    res = peer(hm, "gets", hm.vips["limited"], 80, 12)
    took = time.monotonic() - t0
    ok = res["statuses"].get("200", 0)
    assert 5 <= ok <= 5 + int(took) + 1, (res, took)  # the burst, plus at most the refill
    assert res["statuses"].get("429", 0) == 12 - ok and res["pods"].get("rate_limited") == 12 - ok, res
    assert res["connections"] == 1, res  # a 429 keeps the connection


def test_circuit_breaker_trips_above_max_connections(hm):
    apply(hm, "TrafficPolicy", "capped", "{service: capped, maxConnections: 3}")
    res = peer(hm, "concurrent", hm.vips["capped"], 80, 6, "/hold?ms=3000")
    assert sorted(map(tuple, res)) == [(200, None)] * 3 + [(503, "circuit_open")] * 3, res
    res = peer(hm, "concurrent", hm.vips["capped"], 80, 3, "/hold?ms=100")
    assert [r[0] for r in res] == [200] * 3, res  # slots came back


def test_503_with_a_clear_body_when_no_endpoint_is_healthy(hm):
    apply(hm, "Route", "canary", "{service: canary, rules: [{split: [{subset: {version: v9}, weight: 100}]}]}")
    out = hm.run("client", ["curl", "-sS", "-m", "10", "-D", "-", f"http://{hm.vips['canary']}/"])
    assert out.stdout.startswith("HTTP/1.1 503"), out.stdout
    assert "x-glasswing-reason: no_healthy_endpoint" in out.stdout
    assert "no healthy endpoint for service default/canary" in out.stdout


# ------------------------------------------------------------ bad input


def raw(lab, payload: bytes, wait=3, then_get=False, service="webh"):
    return peer(lab, "raw", lab.vips[service], 80, "-", wait, "1" if then_get else "0", input=payload.hex())


@pytest.mark.parametrize("payload, status", [
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "414"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(100)) + b"\r\n",
     "431"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", "431"),
    (b"GET / HTTP/1.1 junk\r\nHost: x\r\n\r\n", "400"),
    (b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", "400"),
    (b"GET / HTTP/1.1\nHost: x\n\n", "400"),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", "400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "400"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", "501"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "400"),
])
def test_bad_requests_get_4xx_and_the_connection_closes(hm, payload, status):
    out = raw(hm, payload)
    assert out["first"].split(" ")[1:2] == [status], out
    assert out["closed"], out
    assert "smuggled" not in out["reply"]
    assert peer(hm, "gets", hm.vips["webh"], 80, 3)["statuses"] == {"200": 3}  # others still served


def test_header_section_that_never_ends_gets_408(hm):
    t0 = time.monotonic()
    out = raw(hm, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n", wait=30)
    assert out["first"] == "HTTP/1.1 408 Request Timeout" and out["closed"], out
    assert time.monotonic() - t0 < 25
    assert peer(hm, "gets", hm.vips["webh"], 80, 3)["statuses"] == {"200": 3}


def test_smuggled_second_request_is_never_seen_upstream(hm):
    """A body that hides a request behind a chunked terminator: with only Content-Length the
    proxy forwards exactly that many bytes as body, so the server echoes the hidden request
    as data and answers nothing else."""
    hidden = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"0\r\n\r\n" + hidden
    out = raw(hm, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert out["first"] == "HTTP/1.1 200 OK" and out["reply"].endswith(body.decode()), out
    assert out["reply"].count("x-pod:") == 1, out  # one response
