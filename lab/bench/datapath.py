"""`glasswing bench`: the data path measured against its baselines in one run.

Topologies (built here, torn down even on Ctrl-C):
    same node:  client --(path)--> server          (both on n1)
    two nodes:  client --(path)--> server2         (n1 -> n2 over the underlay)
    same node IPv6: client --(path)--> server      (the pods' IPv6 addresses and the IPv6 VIP;
                                                    direct and the default mesh only, no RTT:
                                                    Debian's sockperf has no IPv6)

Paths: direct (no mesh); mesh (the forwarders with the default relay, dataplane/
relay_modes.py; the tunnel across nodes); "mesh MODE" for every other relay mode, forced
(kernel: bytes in the kernel until bulk, then the C thread; engine: the C thread; auto,
splice, copy: in the event loop; --quick keeps kernel and engine);
socket lb (connect4 picks the endpoint, no forwarder on the path); HAProxy placed where the
forwarder sits (one hop on n1, or a pair n1 -> n2 for two nodes), the reference a user would
otherwise pick.

Tools: iperf3 with 1 and 4 streams (Gbit/s; --quick leaves out 4 streams), sockperf
ping-pong with 64-byte messages (round trip p50 and p99 in us, from the same runs: sockperf
reports half of the round trip), and wrk against nginx in the server pod (dataplane/
bench_http.py): HTTP requests/s over 16 keep-alive connections, and new connections/s with
`Connection: close` over 32. Every figure is the median of several runs, with min and max.
Latency runs pin the client, the server and every proxy process to CPU 0 (a wake-up across
the two vCPUs costs more than the path); throughput and wrk runs are not pinned.
"""
import os
import re
from collections import Counter
import signal
import statistics
import subprocess
import time

from dataplane.relay import modes as relay_modes
from lab.bench.run import iperf3_gbps, roomy_ports, torn_down, write_json
from lab.bench.http_peers import HTTP_PORT, nginx_argv, parse_wrk, url, wrk_argv
from lab.cluster import Lab

IPERF_PORT, SOCKPERF_PORT, PROXY_PORT, PAIR_PORT = 5201, 11111, 16000, 16001
HAPROXY_CFG = """global
    maxconn 4000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m
{listeners}
"""
LISTEN = "listen p{port}\n    bind {bind}:{port}\n    server s {dest}\n"


class Bench:
    def __init__(self, quick: bool, say):
        self.quick, self.say = quick, say
        self.runs = 2 if quick else 5
        self.seconds = 1 if quick else 3
        self.lab = Lab("gwbench")
        self.proxies = []  # haproxy Popen
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
                lab.service(f"{name}-{port}", ports=[f"{port}/tcp"], endpoints=[name])
                lab.service(f"{name}-{port}-lb", ports=[f"{port}/tcp"], endpoints=[name], socket_lb=True)
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
        # HAProxy where the forwarder sits: one hop on n1, and a pair n1 -> n2
        gw = self.n1["gateway"]
        one = [LISTEN.format(port=PROXY_PORT + p, bind=gw, dest=f"{self.server['ip']}:{p}")
               for p in (IPERF_PORT, SOCKPERF_PORT, HTTP_PORT)]
        pair1 = [LISTEN.format(port=PROXY_PORT + 100 + p, bind=gw, dest=f"{self.n2['ip']}:{PAIR_PORT + p}")
                 for p in (IPERF_PORT, SOCKPERF_PORT, HTTP_PORT)]
        pair2 = [LISTEN.format(port=PAIR_PORT + p, bind=self.n2["ip"], dest=f"{self.server2['ip']}:{p}")
                 for p in (IPERF_PORT, SOCKPERF_PORT, HTTP_PORT)]
        self._haproxy(self.n1["netns"], one + pair1)
        self._haproxy(self.n2["netns"], pair2)
        time.sleep(0.5)
        for p in self.proxies:
            if p.poll() is not None:
                raise RuntimeError(f"haproxy failed: {p.stderr.read().decode()[-300:]}")

    def _haproxy(self, ns, listeners):
        cfg = os.path.join(self.lab.dir, f"haproxy-{len(self.proxies)}.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(listeners="\n".join(listeners)))
        # `ip netns exec` on purpose: this runs a program in the namespace, which is not
        # netlink (pyroute2 has nothing for it), and haproxy needs no cgroup of the mesh.
        self.proxies.append(subprocess.Popen(["ip", "netns", "exec", ns, "haproxy", "-db", "-f", cfg],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                             start_new_session=True))

    def paths(self):
        gw = self.n1["gateway"]
        mesh = [(p, None, 0) for p in mesh_paths(self.quick)]
        return [
            *[("same node", *p) for p in [("direct", self.server["ip"], 0), *mesh, ("socket lb", None, 0),
                                          ("haproxy", gw, PROXY_PORT)]],
            *[("two nodes", *p) for p in [("direct", self.server2["ip"], 0), *mesh, ("socket lb", None, 0),
                                          ("haproxy pair", gw, PROXY_PORT + 100)]],
            *[("same node IPv6", *p) for p in [("direct", self.server.get("ip6"), 0), ("mesh", None, 0)]
              if self.server.get("ip6")],
        ]

    # ------------------------------------------------------------ tools

    def _dest(self, topo, path, ip, offset, port):
        if path.startswith("mesh") or path == "socket lb":
            server = "server2" if topo == "two nodes" else "server"
            vips = self.vips6 if topo.endswith("IPv6") else self.vips
            return vips[f"{server}-{port}" + ("-lb" if path == "socket lb" else "")], port
        return ip, (offset + port) if offset else port

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
        r = self.lab.run("client", wrk_argv(url(ip, port), self.seconds, 32 if close else 16, close),
                         timeout=self.seconds + 60)
        try:
            got = parse_wrk(r.stdout)
        except ValueError as e:
            raise RuntimeError(f"wrk to {ip}:{port}: {e}") from None
        if got["errors"]:
            raise RuntimeError(f"wrk to {ip}:{port}: {got['errors']} errors")
        return got["rps"]

    def _relay(self, path):
        """The forwarders' relay for this path: "mesh MODE" forces MODE, else the default."""
        mode = path[len("mesh "):] if path.startswith("mesh ") else relay_modes.default()
        for node in ("n1", "n2"):
            self.lab.admin(node, "relay", mode=mode)

    def _pin(self, cpus: str):
        pids = [self.lab.ctl(n).forwarder_pid() for n in ("n1", "n2")]
        pids += [int(x) for p in self.proxies
                 for x in subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True,
                                         text=True).stdout.split()]
        for pid in filter(None, pids):
            subprocess.run(["taskset", "-apc", cpus, str(pid)], capture_output=True)

    # ------------------------------------------------------------ run

    def measure(self):
        metrics = [("Gbit/s, 1 stream", lambda ip, p: self.iperf(ip, p, 1), IPERF_PORT, "0-1"),
                   ("Gbit/s, 4 streams", lambda ip, p: self.iperf(ip, p, 4), IPERF_PORT, "0-1"),
                   ("RTT p50 us, 64 B", self.sockperf, SOCKPERF_PORT, "0"),
                   ("HTTP req/s, keep-alive", lambda ip, p: self.wrk(ip, p, False), HTTP_PORT, "0-1"),
                   ("new conn/s, HTTP close", lambda ip, p: self.wrk(ip, p, True), HTTP_PORT, "0-1")]
        if self.quick:
            metrics = [m for m in metrics if m[0] != "Gbit/s, 4 streams"]
        runs = [(m, t) for m in metrics for t in self.paths() if _measurable(m[2], t[0])]
        total = len(runs) * self.runs
        done = 0
        for metric, fn, port, cpus in metrics:
            self._pin(cpus)
            for topo, path, ip, offset in (t for m, t in runs if m[0] == metric):
                dest = self._dest(topo, path, ip, offset, port)
                self._relay(path)
                values = {}  # metric -> runs; one sockperf run gives p50 and p99
                for _ in range(self.runs):
                    got = fn(*dest)
                    for name, v in (got.items() if isinstance(got, dict) else [(metric, got)]):
                        values.setdefault(name, []).append(v)
                    done += 1
                    self.say(f"\r  [{done}/{total}] {metric:<22} {topo:<10} {path:<13} "
                             f"{values[metric][-1]:10.2f}   ", end="")
                for name, runs in values.items():
                    self.results.append({"metric": name, "topology": topo, "path": path,
                                         "median": statistics.median(runs), "min": min(runs),
                                         "max": max(runs), "runs": runs})
        self._pin("0-1")
        self._relay("mesh")
        order = {m: i for i, m in enumerate(["Gbit/s, 1 stream", "Gbit/s, 4 streams", "RTT p50 us, 64 B",
                                             "RTT p99 us, 64 B", "HTTP req/s, keep-alive",
                                             "new conn/s, HTTP close"])}
        self.results.sort(key=lambda r: order.get(r["metric"], 9))  # stable: paths keep their order
        self.say("\r" + " " * 80 + "\r", end="")

    def release(self):
        for p in self.proxies:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.proxies = []
        self.lab.release()


def _measurable(port: int, topo: str) -> bool:
    """Debian 12's sockperf (3.7) takes no IPv6 address: the IPv6 row has no RTT figures."""
    return not (port == SOCKPERF_PORT and topo.endswith("IPv6"))


def ratios(results):
    """Add ratio to direct and to HAProxy (same metric and topology); None where the
    topology has no such baseline (the IPv6 row has no HAProxy)."""
    by = {(r["metric"], r["topology"], r["path"]): r["median"] for r in results}
    for r in results:
        d = by.get((r["metric"], r["topology"], "direct"))
        h = by.get((r["metric"], r["topology"], "haproxy")) or by.get((r["metric"], r["topology"], "haproxy pair"))
        r["vs_direct"] = r["median"] / d if d else None
        r["vs_haproxy"] = r["median"] / h if h else None
    return results


def table(results) -> str:
    lines = [f"{'metric':<22} {'topology':<14} {'path':<13} {'median':>10} {'min':>10} {'max':>10} "
             f"{'/direct':>8} {'/haproxy':>9}"]
    for r in results:
        vs_d, vs_h = (f"{v:.2f}" if v is not None else "-" for v in (r["vs_direct"], r["vs_haproxy"]))
        lines.append(f"{r['metric']:<22} {r['topology']:<14} {r['path']:<13} {r['median']:10.2f} {r['min']:10.2f} "
                     f"{r['max']:10.2f} {vs_d:>8} {vs_h:>9}")
    return "\n".join(lines)


def svg(results, title) -> str:
    """Bars per metric: one group per topology, one bar per path, labelled."""
    metrics = list(dict.fromkeys(r["metric"] for r in results))
    colors = {"direct": "#888888", "mesh": "#2a7ab0", "mesh engine": "#1d5a85", "mesh kernel": "#174a6e", "mesh auto": "#3f8cc0",
              "mesh splice": "#5b9bc8", "mesh copy": "#8fb8d8",
              "socket lb": "#40a060",
              "haproxy": "#d08030", "haproxy pair": "#d08030"}
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
    """"mesh" (the default relay), then "mesh MODE" for each other relay mode; --quick keeps
    the engine's relays (kernel and engine) and leaves out the event loop's (auto, splice,
    copy), to stay under three minutes."""
    default = relay_modes.default()
    modes = [m for m in relay_modes.MODES if m != default and not (quick and m in ("auto", "splice", "copy"))]
    return ["mesh", *(f"mesh {m}" for m in modes)]


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
