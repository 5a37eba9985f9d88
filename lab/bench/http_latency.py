"""`glasswing bench http`: the latency HTTP/1.1 through the mesh adds, at a fixed rate, against
HAProxy in `mode http` on the same path and under the same load.

Open loop, wrk2's method (ext/loadgen/loadgen.c, built to build/loadgen by `make build`):
requests of a 1 kB response go out at a fixed rate (1,000/s by default) over 16 keep-alive
connections, each request's latency measured from its scheduled send time, so a stall counts
against every request it delays (no coordinated omission). The generator's own cost is in
every path, so a path's difference from direct is what its proxies add. Paths, on one node
and across two:
    direct              client pod to the server pod's address
    mesh http           the service's VIP, a port declared http: every request goes through
                        the forwarder's HTTP proxy (parse, route, pool, trace headers); across
                        nodes through both forwarders and the tunnel
    haproxy http        HAProxy `mode http` (keep-alive, `http-reuse always`) where the
                        forwarder sits, in n1's namespace (lab/bench/haproxy.py)
    haproxy pair http   across nodes a pair, n1 -> n2, as the mesh is
HAProxy runs one thread per node (`nbthread 1`), as the forwarder is one process, so the
targets "added p99 no worse than the HAProxy http hop's" and "forwarder CPU per 1,000
requests no more than HAProxy's" read off one table (and the lines under it).

Topology (built here, torn down even on Ctrl-C):
    n1: client, server (nginx), HAProxy        n2: server2 (nginx), HAProxy
    services web -> server:8080/http, web2 -> server2:8080/http

Reported per path, median over runs: p50, p90, p99 (and p99.9) latency, and for every proxied
path the added latency against direct (same topology) and the proxies' CPU time per 1,000
requests: user + system of every process of the proxy on the path (the forwarders of n1, or
n1 and n2; HAProxy's of n1, or n1 and n2), read from /proc before and after each run.
"""
import json
import os
import shutil
import statistics
import subprocess
import time

from lab.bench.connections import cpu_seconds
from lab.bench import http_peers as bench_http
from lab.bench.haproxy import HAProxies, listener
from lab.bench.run import torn_down, two_nodes, write_json
from lab.cluster import Lab
from dataplane.settings import SOURCE_ROOT

PORT = 8080
HOP_PORT, PAIR1_PORT, PAIR2_PORT = 18080, 18180, 18081  # HAProxy: one hop, the pair's halves
BODY_BYTES = 1024
LOADGEN_SRC = os.path.join(SOURCE_ROOT, "ext", "loadgen", "loadgen.c")
LOADGEN = os.path.join(SOURCE_ROOT, "build", "loadgen")
PERCENTILES = ("p50_us", "p90_us", "p99_us", "p999_us")


def loadgen_binary(work_dir: str) -> str:
    """build/loadgen, or a fresh build of it in work_dir when it is missing or stale."""
    if os.path.exists(LOADGEN) and os.path.getmtime(LOADGEN) >= os.path.getmtime(LOADGEN_SRC):
        return LOADGEN
    out = os.path.join(work_dir, "loadgen")
    subprocess.run(["gcc", "-O2", "-o", out, LOADGEN_SRC], check=True)
    return out


def nginx_argv(work_dir: str, name: str, ip: str) -> list:
    """One nginx answering every request with BODY_BYTES of body."""
    return bench_http.nginx_argv(work_dir, name, ip, PORT, body="x" * (BODY_BYTES - 1) + "\n")


class HttpLatencyBench:
    def __init__(self, rate: float, connections: int, seconds: float, runs: int, say):
        self.rate, self.connections, self.seconds, self.runs = rate, connections, seconds, runs
        self.say = say
        self.lab = Lab("gwhttpb")
        self.haproxy = HAProxies(self.lab.dir)
        self.results, self.notes = [], []

    def build(self):
        lab = self.lab
        self.ip, self.vip = two_nodes(lab, {"web": (f"80:{PORT}/http", "server"),
                                            "web2": (f"80:{PORT}/http", "server2")})
        for pod in ("server", "server2"):
            lab.spawn(pod, nginx_argv(lab.dir, pod, self.ip[pod]))
        self.fwd = {n: lab.ctl(n).forwarder_pid() for n in ("n1", "n2")}
        n1, n2 = lab.doc["nodes"]["n1"], lab.doc["nodes"]["n2"]
        self.gw = n1["gateway"]
        self.haproxy.start("n1", n1["netns"], [
            listener("http", self.gw, HOP_PORT, f"{self.ip['server']}:{PORT}"),
            listener("http", self.gw, PAIR1_PORT, f"{n2['ip']}:{PAIR2_PORT}")])
        self.haproxy.start("n2", n2["netns"], [listener("http", n2["ip"], PAIR2_PORT, f"{self.ip['server2']}:{PORT}")])
        self.haproxy.running()
        self.loadgen = loadgen_binary(lab.dir)
        deadline = time.monotonic() + 10
        for _topo, _path, ip, port, _cpu in self.paths():
            while self._load(ip, port, rate=100, seconds=0.2, warmup=0).get("completed", 0) < 20:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no HTTP answers from {ip}:{port}")
                time.sleep(0.2)

    def _load(self, ip, port, rate=None, seconds=None, warmup=1.0):
        argv = [self.loadgen, ip, str(port), "/", str(rate or self.rate), str(seconds or self.seconds),
                str(self.connections), str(warmup)]
        r = self.lab.run("client", argv, timeout=(seconds or self.seconds) + 60)
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"loadgen: {r.stderr.strip()[-300:]}") from None

    def paths(self):
        """(topology, path, ip, port, cpu): cpu() is the CPU seconds so far of the proxies on the
        path (None for direct)."""
        fwd = lambda *nodes: lambda: sum(cpu_seconds(self.fwd[n]) for n in nodes)
        ha = lambda *nodes: lambda: self.haproxy.cpu_seconds(*nodes)
        return [("same node", "direct", self.ip["server"], PORT, None),
                ("same node", "mesh http", self.vip["web"], 80, fwd("n1")),
                ("same node", "haproxy http", self.gw, HOP_PORT, ha("n1")),
                ("two nodes", "direct", self.ip["server2"], PORT, None),
                ("two nodes", "mesh http", self.vip["web2"], 80, fwd("n1", "n2")),
                ("two nodes", "haproxy pair http", self.gw, PAIR1_PORT, ha("n1", "n2"))]

    def measure(self):
        for topo, path, ip, port, cpu_now in self.paths():
            runs, cpu = [], []
            for i in range(self.runs):
                before = cpu_now() if cpu_now else 0.0
                got = self._load(ip, port)
                if cpu_now:
                    cpu.append(1e3 * (cpu_now() - before) / max(1, got["completed"]) * 1000)  # ms per 1,000
                runs.append(got)
                self.say(f"\r  {topo:<10} {path:<17} run {i + 1}/{self.runs}: p50 {got['p50_us']:7.0f} us "
                         f"p99 {got['p99_us']:7.0f} us  ", end="")
            row = {"topology": topo, "path": path, "runs": runs,
                   "errors": sum(r["errors"] + r["non_2xx"] + r["unsent"] + r["unanswered"] for r in runs),
                   "rate": statistics.median(r["rate"] for r in runs)}
            for p in PERCENTILES:
                row[p] = statistics.median(r[p] for r in runs)
            if cpu:
                row["cpu_ms_per_1k"] = statistics.median(cpu)
                row["cpu_ms_per_1k_runs"] = cpu
            self.results.append(row)
        added(self.results)

    def release(self):
        self.haproxy.release()
        self.lab.release()


def added(results) -> list:
    """Give every row but direct its added latency against direct of the same topology."""
    direct = {r["topology"]: r for r in results if r["path"] == "direct"}
    for r in results:
        if r["path"] != "direct" and r["topology"] in direct:
            r["added_us"] = {p: r[p] - direct[r["topology"]][p] for p in PERCENTILES}
    return results


def against_haproxy(results) -> list:
    """Per topology with both, the mesh against HAProxy http on the issue's targets, one line:
    added p99 (the mesh's no more than HAProxy's) and CPU per 1,000 requests (the same)."""
    out = []
    for topo in dict.fromkeys(r["topology"] for r in results):
        mesh = next((r for r in results if r["topology"] == topo and r["path"].startswith("mesh")), None)
        ha = next((r for r in results if r["topology"] == topo and r["path"].startswith("haproxy")), None)
        if not all(r and "added_us" in r and "cpu_ms_per_1k" in r for r in (mesh, ha)):
            continue
        out.append(f"{topo}: {mesh['path']} against {ha['path']}: added p99 {mesh['added_us']['p99_us']:.0f} "
                   f"against {ha['added_us']['p99_us']:.0f} us, CPU {mesh['cpu_ms_per_1k']:.1f} against "
                   f"{ha['cpu_ms_per_1k']:.1f} ms per 1,000 requests")
    return out


def table(results, notes=()) -> str:
    lines = [f"{'topology':<10} {'path':<17} {'rate/s':>7} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} "
             f"{'p99.9 us':>9} {'+p50':>7} {'+p90':>7} {'+p99':>7} {'CPU ms/1k':>9} {'errors':>6}"]
    for r in results:
        a = r.get("added_us")
        plus = (f"{a['p50_us']:7.0f} {a['p90_us']:7.0f} {a['p99_us']:7.0f}" if a else f"{'':>7} {'':>7} {'':>7}")
        cpu = f"{r['cpu_ms_per_1k']:9.1f}" if "cpu_ms_per_1k" in r else f"{'':>9}"
        lines.append(f"{r['topology']:<10} {r['path']:<17} {r['rate']:7.0f} {r['p50_us']:8.0f} {r['p90_us']:8.0f} "
                     f"{r['p99_us']:8.0f} {r['p999_us']:9.0f} {plus} {cpu} {r['errors']:6d}")
    return "\n".join(lines + against_haproxy(results) + [f"note: {n}" for n in notes])


def run(rate: float, connections: int, seconds: float, runs: int, out_dir: str, say=print) -> list:
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (scripts/install.sh installs it)")
    b = HttpLatencyBench(rate, connections, seconds, runs, say)
    t0 = time.monotonic()
    with torn_down(b.release, say):
        say(f"building two nodes, three pods and HAProxy (one hop, a pair); {runs} runs x {seconds:g}s per "
            f"path at {rate:g} req/s of {BODY_BYTES} B over {connections} connections (open loop)")
        b.build()
        b.measure()
    path = write_json(out_dir, "http_latency.json", rate=rate, connections=connections, seconds=seconds,
                      runs=runs, body_bytes=BODY_BYTES, wall_seconds=round(time.monotonic() - t0, 1),
                      results=b.results)
    say(table(b.results))
    say(f"wrote {path}")
    return b.results
