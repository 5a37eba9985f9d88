"""`glasswing bench`: the data path measured against its baselines in one run.

Topologies (built here, torn down even on Ctrl-C):
    same node:  client --(path)--> server          (both on n1)
    two nodes:  client --(path)--> server2         (n1 -> n2 over the underlay)
    same node IPv6: client --(path)--> server      (the pods' IPv6 addresses and the IPv6 VIP;
                                                    direct and the default mesh only, no RTT:
                                                    Debian's sockperf has no IPv6)

Paths, each with a mode (what a proxy on it carries; "-" for direct, which has no proxy):
    direct              -     no mesh
    mesh                tcp   the forwarders with the default relay (dataplane/relay/modes.py)
                              through ports declared `tcp`; the tunnel across nodes
    mesh MODE           tcp   every other relay mode, forced (kernel: bytes in the kernel until
                              bulk, then the C thread; engine: the C thread; auto, splice,
                              copy: in the event loop; --quick keeps kernel and engine)
    socket lb           tcp   connect4 picks the endpoint, no forwarder on the path
    haproxy             tcp   HAProxy `mode tcp` where the forwarder sits: one hop on n1
    haproxy pair        tcp   ... or a pair n1 -> n2 for two nodes, as the mesh is
    mesh http           http  a port declared `http`: the forwarder's HTTP/1.1 proxy
    mesh sniffed        http  an undeclared port: sniffed per connection, then the same proxy
    haproxy http        http  HAProxy `mode http` (keep-alive, `http-reuse always`), one hop
    haproxy pair http   http  ... and the pair across nodes
(lab/bench/haproxy.py: one HAProxy process per node, one thread, as the forwarder is one
process.) The http paths run in the keep-alive HTTP figure only: there a reader sees the mesh
through ports declared `http` and undeclared against HAProxy `mode http`, next to the mesh
through ports declared `tcp` against HAProxy `mode tcp`. Every row's /haproxy ratio is against
HAProxy in the row's own mode (ratios()).

Tools: iperf3 with 1 and 4 streams (Gbit/s; --quick leaves out 4 streams), sockperf
ping-pong with 64-byte messages (round trip p50 and p99 in us, from the same runs: sockperf
reports half of the round trip), and wrk against nginx in the server pod (lab/bench/
http_peers.py): HTTP requests/s over 16 keep-alive connections, and new connections/s with
`Connection: close` over 32. Every figure is the median of several runs, with min and max;
requests wrk gave up on after 2 s are counted (timeouts) and listed under the table, any other
wrk error fails the bench. Latency runs pin the client, the server and every proxy process to
CPU 0 (a wake-up across the two vCPUs costs more than the path); throughput and wrk runs are
not pinned.
"""
import os
import re
from collections import Counter
import statistics
import subprocess
import time
from typing import NamedTuple

from dataplane.relay import modes as relay_modes
from lab.bench.haproxy import HAProxies, listener
from lab.bench.run import iperf3_gbps, roomy_ports, torn_down, write_json
from lab.bench.http_peers import HTTP_PORT, nginx_argv, parse_wrk, url, wrk_argv
from lab.cluster import Lab

IPERF_PORT, SOCKPERF_PORT = 5201, 11111
# HAProxy listens on BASE + the server's port: one hop, the pair's first and second halves
PROXY_PORT, PAIR1_PORT, PAIR2_PORT = 16000, 16100, 16001
HTTP_PROXY_PORT, HTTP_PAIR1_PORT, HTTP_PAIR2_PORT = 16200, 16300, 16002
KEEP_ALIVE = "HTTP req/s, keep-alive"
# the mesh's services for one server port: name suffix -> port declaration
SERVICES = {"": "{}/tcp", "-lb": "{}/tcp", "-http": "{}/http", "-sniff": "{}"}


class Path(NamedTuple):
    topology: str
    name: str
    mode: str        # "tcp" or "http": what the proxy on the path carries; "-": no proxy (direct)
    ip: str = None   # where the client connects; None: the service VIP (mesh, socket lb)
    offset: int = 0  # HAProxy: its listener is offset + the server's port
    service: str = ""  # mesh and socket lb: suffix of the service name (SERVICES)
    relay: str = None  # mesh: the forwarders' relay mode for this path


class Bench:
    def __init__(self, quick: bool, say):
        self.quick, self.say = quick, say
        self.runs = 2 if quick else 5
        self.seconds = 1 if quick else 3
        self.lab = Lab("gwbench")
        self.haproxy = HAProxies(self.lab.dir)
        self.results = []

    # ------------------------------------------------------------ topology

    def build(self):
        lab = self.lab
        lab.node("n1")
        lab.node("n2")
        lab.pod("client", "n1")
        self.server = lab.pod("server", "n1")
        self.server2 = lab.pod("server2", "n2")
        for name in ("server", "server2"):
            for port in (IPERF_PORT, SOCKPERF_PORT, HTTP_PORT):
                for suffix, spec in SERVICES.items():
                    if suffix in ("", "-lb") or port == HTTP_PORT:
                        lab.service(f"{name}-{port}{suffix}", ports=[spec.format(port)], endpoints=[name],
                                    socket_lb=suffix == "-lb")
        lab.up("n1")
        lab.up("n2")
        self.vips = {s["name"]: s["vip"] for s in lab.doc["services"].values()}
        self.vips6 = {s["name"]: s.get("vip6") for s in lab.doc["services"].values()}
        for name, rec in (("server", self.server), ("server2", self.server2)):
            for ip in filter(None, (rec["ip"], rec.get("ip6"))):
                lab.spawn(name, ["iperf3", "-s", "-B", ip, "-p", str(IPERF_PORT)])
            lab.spawn(name, ["taskset", "-c", "0", "sockperf", "sr", "--tcp", "-i", rec["ip"],
                             "-p", str(SOCKPERF_PORT)])
            lab.spawn(name, nginx_argv(lab.dir, name, rec["ip"], ip6=rec.get("ip6") or ""))
        roomy_ports(lab)  # as in bench connections: wrk's close runs open ~10^5 connections
        doc = lab.doc
        self.n1, self.n2 = doc["nodes"]["n1"], doc["nodes"]["n2"]
        # HAProxy where the forwarder sits: one hop on n1, and a pair n1 -> n2, in tcp mode for
        # every server port and in http mode for nginx's
        gw, n2 = self.n1["gateway"], self.n2["ip"]
        first, second = [], []
        for mode, ports, one, pair1, pair2 in (
                ("tcp", (IPERF_PORT, SOCKPERF_PORT, HTTP_PORT), PROXY_PORT, PAIR1_PORT, PAIR2_PORT),
                ("http", (HTTP_PORT,), HTTP_PROXY_PORT, HTTP_PAIR1_PORT, HTTP_PAIR2_PORT)):
            for p in ports:
                first.append(listener(mode, gw, one + p, f"{self.server['ip']}:{p}"))
                first.append(listener(mode, gw, pair1 + p, f"{n2}:{pair2 + p}"))
                second.append(listener(mode, n2, pair2 + p, f"{self.server2['ip']}:{p}"))
        self.haproxy.start("n1", self.n1["netns"], first)
        self.haproxy.start("n2", self.n2["netns"], second)
        self.haproxy.running()

    def paths(self) -> list:
        gw = self.n1["gateway"]
        mesh = [Path("", name, "tcp", relay=mode) for name, mode in mesh_paths(self.quick)]
        http = [Path("", "mesh http", "http", service="-http", relay=relay_modes.default()),
                Path("", "mesh sniffed", "http", service="-sniff", relay=relay_modes.default())]
        same = [Path("", "direct", "-", self.server["ip"]), *mesh, Path("", "socket lb", "tcp", service="-lb"),
                Path("", "haproxy", "tcp", gw, PROXY_PORT),
                *http, Path("", "haproxy http", "http", gw, HTTP_PROXY_PORT)]
        two = [Path("", "direct", "-", self.server2["ip"]), *mesh, Path("", "socket lb", "tcp", service="-lb"),
               Path("", "haproxy pair", "tcp", gw, PAIR1_PORT),
               *http, Path("", "haproxy pair http", "http", gw, HTTP_PAIR1_PORT)]
        v6 = [Path("", "direct", "-", self.server.get("ip6")), mesh[0]] if self.server.get("ip6") else []
        return ([p._replace(topology="same node") for p in same] + [p._replace(topology="two nodes") for p in two]
                + [p._replace(topology="same node IPv6") for p in v6])

    # ------------------------------------------------------------ tools

    def _dest(self, path: Path, port: int):
        if path.ip is None:
            server = "server2" if path.topology == "two nodes" else "server"
            vips = self.vips6 if path.topology.endswith("IPv6") else self.vips
            return vips[f"{server}-{port}{path.service}"], port
        return path.ip, path.offset + port

    def iperf(self, ip, port, streams):
        r = self.lab.run("client", ["iperf3", "-J", "-c", ip, "-p", str(port), "-t", str(self.seconds),
                                    "-P", str(streams)], timeout=self.seconds + 60)
        return iperf3_gbps(r, f"{ip}:{port}")

    def sockperf(self, ip, port):
        r = self.lab.run("client", ["taskset", "-c", "0", "sockperf", "pp", "--tcp", "-i", ip, "-p", str(port),
                                    "-t", str(self.seconds), "-m", "64"], timeout=self.seconds + 60)
        p50 = re.search(r"percentile 50\.000 =\s+([\d.]+)", r.stdout)
        p99 = re.search(r"percentile 99\.000 =\s+([\d.]+)", r.stdout)
        if r.returncode != 0 or not p50 or not p99:
            raise RuntimeError(f"sockperf to {ip}:{port}: {(r.stdout + r.stderr)[-300:]}")
        # sockperf reports half the round trip
        return {"RTT p50 us, 64 B": 2 * float(p50.group(1)), "RTT p99 us, 64 B": 2 * float(p99.group(1))}

    def wrk(self, ip, port, close):
        """(requests/s, requests wrk gave up on after its 2 s timeout); any other error raises."""
        r = self.lab.run("client", wrk_argv(url(ip, port), self.seconds, 32 if close else 16, close),
                         timeout=self.seconds + 60)
        try:
            got = parse_wrk(r.stdout)
        except ValueError as e:
            raise RuntimeError(f"wrk to {ip}:{port}: {e}") from None
        if got["errors"]:
            raise RuntimeError(f"wrk to {ip}:{port}: {got['errors']} errors")
        return got["rps"], got["timeouts"]

    def _relay(self, path: Path):
        """The forwarders' relay for this path (the default where the path names none)."""
        for node in ("n1", "n2"):
            self.lab.admin(node, "relay", mode=path.relay or relay_modes.default())

    def _pin(self, cpus: str):
        pids = [self.lab.ctl(n).forwarder_pid() for n in ("n1", "n2")] + self.haproxy.pids()
        for pid in filter(None, pids):
            subprocess.run(["taskset", "-apc", cpus, str(pid)], capture_output=True)

    # ------------------------------------------------------------ run

    def measure(self):
        # metric, fn(ip, port) -> ({metric: value}, wrk timeouts), server port, CPUs to pin to
        metrics = [("Gbit/s, 1 stream", lambda ip, p: ({"Gbit/s, 1 stream": self.iperf(ip, p, 1)}, 0),
                    IPERF_PORT, "0-1"),
                   ("Gbit/s, 4 streams", lambda ip, p: ({"Gbit/s, 4 streams": self.iperf(ip, p, 4)}, 0),
                    IPERF_PORT, "0-1"),
                   ("RTT p50 us, 64 B", lambda ip, p: (self.sockperf(ip, p), 0), SOCKPERF_PORT, "0"),
                   (KEEP_ALIVE, lambda ip, p: _one(KEEP_ALIVE, *self.wrk(ip, p, False)), HTTP_PORT, "0-1"),
                   ("new conn/s, HTTP close", lambda ip, p: _one("new conn/s, HTTP close", *self.wrk(ip, p, True)),
                    HTTP_PORT, "0-1")]
        if self.quick:
            metrics = [m for m in metrics if m[0] != "Gbit/s, 4 streams"]
        runs = [(m, path) for m in metrics for path in self.paths() if measurable(m[0], path)]
        total = len(runs) * self.runs
        done = 0
        for metric, fn, port, cpus in metrics:
            self._pin(cpus)
            for path in (path for m, path in runs if m[0] == metric):
                dest = self._dest(path, port)
                self._relay(path)
                values, timeouts = {}, 0  # metric -> runs; one sockperf run gives p50 and p99
                for _ in range(self.runs):
                    got, late = fn(*dest)
                    timeouts += late
                    for name, v in got.items():
                        values.setdefault(name, []).append(v)
                    done += 1
                    self.say(f"\r  [{done}/{total}] {metric:<22} {path.topology:<10} {path.name:<17} "
                             f"{values[metric][-1]:10.2f}   ", end="")
                for name, got in values.items():
                    self.results.append({"metric": name, "topology": path.topology, "path": path.name,
                                         "mode": path.mode, "median": statistics.median(got), "min": min(got),
                                         "max": max(got), "runs": got, "timeouts": timeouts})
        self._pin("0-1")
        self._relay(Path("", "mesh", "tcp"))
        order = {m: i for i, m in enumerate(["Gbit/s, 1 stream", "Gbit/s, 4 streams", "RTT p50 us, 64 B",
                                             "RTT p99 us, 64 B", KEEP_ALIVE, "new conn/s, HTTP close"])}
        self.results.sort(key=lambda r: order.get(r["metric"], 9))  # stable: paths keep their order
        self.say("\r" + " " * 80 + "\r", end="")

    def release(self):
        self.haproxy.release()
        self.lab.release()


def _one(metric, value, timeouts):
    return {metric: value}, timeouts


def measurable(metric: str, path: Path) -> bool:
    """The http paths are for the keep-alive HTTP figure only (the L4 figures would measure
    the tcp relay behind them again). Debian 12's sockperf (3.7) takes no IPv6 address: the
    IPv6 row has no RTT figures."""
    if path.mode == "http" and metric != KEEP_ALIVE:
        return False
    return not (metric.startswith("RTT") and path.topology.endswith("IPv6"))


def ratios(results):
    """Add vs_direct, against direct (same metric and topology), and vs_haproxy, against HAProxy
    in the row's own mode (same metric and topology; tcp rows against haproxy/haproxy pair,
    http rows against haproxy http/haproxy pair http). None where there is no such baseline:
    the IPv6 topology has no HAProxy, and direct has no mode."""
    direct = {(r["metric"], r["topology"]): r["median"] for r in results if r["path"] == "direct"}
    haproxy = {(r["metric"], r["topology"], r["mode"]): r["median"] for r in results
               if r["path"].startswith("haproxy")}
    for r in results:
        d = direct.get((r["metric"], r["topology"]))
        h = haproxy.get((r["metric"], r["topology"], r["mode"]))
        r["vs_direct"] = r["median"] / d if d else None
        r["vs_haproxy"] = r["median"] / h if h else None
    return results


def table(results) -> str:
    """One line per row; /haproxy is against HAProxy in the row's mode. Rows where wrk gave up
    on requests are listed under the table with the count."""
    lines = [f"{'metric':<22} {'topology':<14} {'path':<17} {'mode':<4} {'median':>10} {'min':>10} {'max':>10} "
             f"{'/direct':>8} {'/haproxy':>9}"]
    for r in results:
        vs_d, vs_h = (f"{v:.2f}" if v is not None else "-" for v in (r["vs_direct"], r["vs_haproxy"]))
        lines.append(f"{r['metric']:<22} {r['topology']:<14} {r['path']:<17} {r['mode']:<4} {r['median']:10.2f} "
                     f"{r['min']:10.2f} {r['max']:10.2f} {vs_d:>8} {vs_h:>9}")
    lines += [f"note: {r['metric']}, {r['topology']}, {r['path']}: {r['timeouts']} requests timed out "
              f"(wrk's 2 s) over {len(r['runs'])} runs" for r in results if r.get("timeouts")]
    return "\n".join(lines)


def svg(results, title) -> str:
    """Bars per metric: one group per topology, one bar per path, labelled."""
    metrics = list(dict.fromkeys(r["metric"] for r in results))
    colors = {"direct": "#888888", "mesh": "#2a7ab0", "mesh engine": "#1d5a85", "mesh kernel": "#174a6e", "mesh auto": "#3f8cc0",
              "mesh splice": "#5b9bc8", "mesh copy": "#8fb8d8",
              "socket lb": "#40a060",
              "haproxy": "#d08030", "haproxy pair": "#d08030",
              "mesh http": "#7a3fb0", "mesh sniffed": "#a070d0",
              "haproxy http": "#b05a10", "haproxy pair http": "#b05a10"}
    panel_h, bar_w = 220, 46
    bars = max(Counter((r["metric"], r["topology"]) for r in results).values(), default=1)
    topos = len({r["topology"] for r in results}) or 1
    w = max(1100, 20 + topos * (bars * (bar_w + 30) + 40))  # every bar and label fits
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{60 + panel_h * len(metrics)}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="24" font-size="16" font-weight="bold">{title}</text>']
    for i, metric in enumerate(metrics):
        rows = [r for r in results if r["metric"] == metric]
        top = 50 + i * panel_h
        peak = max(r["max"] for r in rows) or 1
        out.append(f'<text x="10" y="{top + 14}" font-weight="bold">{metric}'
                   f'{" (lower is better)" if "RTT" in metric else " (higher is better)"}</text>')
        x = 20
        for topo in dict.fromkeys(r["topology"] for r in rows):
            out.append(f'<text x="{x}" y="{top + panel_h - 2}" font-weight="bold">{topo}</text>')
            for r in (r for r in rows if r["topology"] == topo):
                h = (panel_h - 70) * r["median"] / peak
                y = top + panel_h - 30 - h
                out.append(f'<rect x="{x}" y="{y:.1f}" width="{bar_w}" height="{h:.1f}" '
                           f'fill="{colors.get(r["path"], "#555")}"/>')
                out.append(f'<text x="{x + bar_w / 2}" y="{y - 4:.1f}" text-anchor="middle">{r["median"]:.{0 if r["median"] >= 1000 else 1}f}</text>')
                out.append(f'<text x="{x + bar_w / 2}" y="{top + panel_h - 18}" text-anchor="middle" '
                           f'font-size="10">{r["path"]}</text>')
                x += bar_w + 30
            x += 40
    out.append("</svg>")
    return "\n".join(out)


def mesh_paths(quick: bool = False) -> list:
    """[(path name, relay mode)]: "mesh" (the default relay), then "mesh MODE" for each other
    relay mode; --quick keeps the engine's relays (kernel and engine) and leaves out the event
    loop's (auto, splice, copy), to stay near three minutes."""
    default = relay_modes.default()
    modes = [m for m in relay_modes.MODES if m != default and not (quick and m in ("auto", "splice", "copy"))]
    return [("mesh", default), *((f"mesh {m}", m) for m in modes)]


def run(quick: bool, out_dir: str, say=print) -> list:
    b = Bench(quick, lambda *a, **k: say(*a, **k))
    with torn_down(b.release, say):
        say(f"building two nodes, three pods, HAProxy one hop and pair ({'quick' if quick else 'full'} run: "
            f"{b.runs} runs of {b.seconds}s per figure)")
        b.build()
        t0 = time.monotonic()
        b.measure()
        results = ratios(b.results)
    write_json(out_dir, "bench.json", quick=quick, seconds=round(time.monotonic() - t0, 1), results=results)
    with open(os.path.join(out_dir, "bench.svg"), "w") as f:
        f.write(svg(results, f"glasswing bench on {os.uname().release}, {os.cpu_count()} vCPUs"))
    say(table(results))
    say(f"wrote {out_dir}/bench.json and {out_dir}/bench.svg")
    return results
