"""`glasswing bench connections`: the IM case. Many long-lived, mostly idle connections held
through the mesh, and the rate of new connections, each against the direct path in one run.

Topology (built here, torn down even on Ctrl-C):
    n1: client, server        n2: server2        services echo -> server, echo2 -> server2

1. Connection rate: `bench_peer rate` (connect, one echoed byte, close; 64 in flight) direct
   and through the mesh, same node and two nodes; median of several runs, with the forwarder's
   CPU time per connection.
2. Long-lived: `bench_peer hold` opens N connections through the mesh (same node, then two
   nodes), each sending a 33-byte message every --period seconds for --hold seconds. The
   forwarder's resident memory is sampled idle and with all N open: the difference over N is
   its memory per idle connection (user space; the kernel's socket buffers are not in it).

Each relayed connection costs the forwarder two sockets (two fds) while idle: N is capped at
what the forwarder's open-file limit allows, and the cap is printed when it applies.
"""
import json
import os
import statistics
import subprocess
import sys
import time

from lab.bench.run import roomy_ports, torn_down, two_nodes, write_json
from lab.cluster import Lab

PORT = 9000
RESERVE_FDS = 256  # listeners, maps, programs, store and admin sockets, spare


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_room(pid: int) -> int:
    """Connections the forwarder can still take: two fds each, some kept in reserve."""
    with open(f"/proc/{pid}/limits") as f:
        limit = next(int(line.split()[3]) for line in f if line.startswith("Max open files"))
    return max(0, (limit - len(os.listdir(f"/proc/{pid}/fd")) - RESERVE_FDS) // 2)


class ConnBench:
    def __init__(self, quick: bool, connections: int, hold: float, period: float, say):
        self.say = say
        self.runs = 3 if quick else 5
        self.rate_n = 2000 if quick else 5000
        self.want = connections
        self.hold, self.period = hold, period
        self.lab = Lab("gwconn")
        self.results, self.notes = [], []

    def build(self):
        lab = self.lab
        self.ip, self.vip = two_nodes(lab, {"echo": (f"{PORT}/tcp", "server"),
                                            "echo2": (f"{PORT}/tcp", "server2")})
        roomy_ports(lab)
        for pod in ("server", "server2"):
            lab.spawn(pod, [sys.executable, "-m", "lab.bench.peer", "serve", self.ip[pod], str(PORT)])
        self.fwd = {n: lab.ctl(n).forwarder_pid() for n in ("n1", "n2")}
        deadline = time.monotonic() + 10
        while self._peer(["rate", self.ip["server2"], str(PORT), "1"])["connections"] != 1:
            if time.monotonic() > deadline:
                raise RuntimeError("echo servers did not start")
            time.sleep(0.2)

    def _peer(self, args, timeout=300):
        r = self.lab.run("client", [sys.executable, "-m", "lab.bench.peer", *args], timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"bench_peer {args[0]}: {r.stderr.strip()[-300:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def paths(self):
        return [("same node", "direct", self.ip["server"], ()),
                ("same node", "mesh", self.vip["echo"], ("n1",)),
                ("two nodes", "direct", self.ip["server2"], ()),
                ("two nodes", "mesh", self.vip["echo2"], ("n1", "n2"))]

    def rate(self):
        for topo, path, ip, fwds in self.paths():
            rates, cpu, errors = [], [], 0
            for i in range(self.runs):
                before = {n: cpu_seconds(self.fwd[n]) for n in fwds}
                got = self._peer(["rate", ip, str(PORT), str(self.rate_n)])
                rates.append(got["per_second"])
                errors += sum(got["errors"].values())
                if fwds:
                    used = sum(cpu_seconds(self.fwd[n]) - before[n] for n in fwds)
                    cpu.append(1e6 * used / max(1, got["connections"]))
                self.say(f"\r  rate {topo:<10} {path:<7} run {i + 1}/{self.runs}: {got['per_second']:9.0f}/s   ",
                         end="")
            self._add("new connections/s", topo, path, rates, errors=errors)
            if cpu:
                self._add("forwarder CPU us/conn", topo, path, cpu)

    def hold_open(self):
        room = min(fd_room(self.fwd["n1"]), fd_room(self.fwd["n2"]))
        n = min(self.want, room)
        if n < self.want:
            self.notes.append(f"{self.want} connections asked, {n} held: the forwarder's open-file "
                              f"limit allows no more (two fds per idle connection; raise the hard "
                              f"limit of RLIMIT_NOFILE to hold more)")
        for topo, vip, fwds in (("same node", self.vip["echo"], ("n1",)),
                                ("two nodes", self.vip["echo2"], ("n1", "n2"))):
            if topo == "two nodes":  # a fresh n1: the heap it grew for the first hold stays
                self.lab.down("n1")
                self.lab.up("n1")
                self.fwd["n1"] = self.lab.ctl("n1").forwarder_pid()
            idle = {f: rss_kib(self.fwd[f]) for f in fwds}
            self.say(f"\r  holding {n} connections, {topo}, for {self.hold:.0f}s ...            ", end="")
            p = self.lab.spawn("client", [sys.executable, "-m", "lab.bench.peer", "hold", vip, str(PORT),
                                          str(n), "--period", str(self.period), "--hold", str(self.hold)],
                               stdout=subprocess.PIPE, text=True)
            opened = json.loads(p.stdout.readline() or "{}")
            t_open = time.monotonic()
            time.sleep(min(self.period, self.hold / 2))  # every connection has sent once more
            held = {f: rss_kib(self.fwd[f]) for f in fwds}
            conns = {f: self.lab.admin(f, "status")["connections"] for f in fwds}
            # how many the kernel relay carries, late in the hold (a connection goes to the
            # kernel after 16 turns: 8 messages and their echoes)
            time.sleep(max(0.0, t_open + 0.8 * self.hold - time.monotonic()))
            in_kernel = {f: self.lab.admin(f, "status").get("connections_in_kernel", 0) for f in fwds}
            done = json.loads(p.stdout.readline() or "{}")
            p.wait(timeout=60)
            if not opened or not done:
                raise RuntimeError(f"bench_peer hold ({topo}) ended early")
            per_conn = max((held[f] - idle[f]) * 1024 / max(1, opened["open"]) for f in fwds)
            errors = sum(opened["errors"].values()) + sum(done["errors"].values())
            self._add("connections held", topo, "mesh", [opened["open"]], errors=errors,
                      messages=done["messages"], forwarder_connections=conns,
                      forwarder_connections_in_kernel=in_kernel)
            self._add("forwarder bytes/conn", topo, "mesh", [per_conn],
                      rss_idle_kib=idle, rss_held_kib=held)
            self._add("open rate conn/s", topo, "mesh", [opened["per_second"]])

    def _add(self, metric, topo, path, runs, **extra):
        self.results.append({"metric": metric, "topology": topo, "path": path,
                             "median": statistics.median(runs), "min": min(runs), "max": max(runs),
                             "runs": runs, **extra})

    def release(self):
        self.lab.release()


def table(results, notes) -> str:
    direct = {(r["metric"], r["topology"]): r["median"] for r in results if r["path"] == "direct"}
    lines = [f"{'metric':<24} {'topology':<10} {'path':<7} {'median':>10} {'min':>10} {'max':>10} "
             f"{'/direct':>8} {'errors':>7}"]
    for r in results:
        d = direct.get((r["metric"], r["topology"]))
        ratio = f"{r['median'] / d:8.2f}" if d and r["path"] != "direct" else f"{'':>8}"
        lines.append(f"{r['metric']:<24} {r['topology']:<10} {r['path']:<7} {r['median']:10.1f} "
                     f"{r['min']:10.1f} {r['max']:10.1f} {ratio} {r.get('errors', ''):>7}")
    return "\n".join(lines + [f"note: {n}" for n in notes])


def run(quick: bool, connections: int, hold: float, period: float, out_dir: str, say=print) -> list:
    b = ConnBench(quick, connections, hold, period, say)
    t0 = time.monotonic()
    with torn_down(b.release, say):
        say(f"building two nodes and three pods ({'quick' if quick else 'full'} run: rate {b.runs} x "
            f"{b.rate_n} connections per path; {connections} long-lived connections for {hold:.0f}s)")
        b.build()
        b.rate()
        b.hold_open()
    path = write_json(out_dir, "connections.json", quick=quick, seconds=round(time.monotonic() - t0, 1),
                      notes=b.notes, results=b.results)
    say(table(b.results, b.notes))
    say(f"wrote {path}")
    return b.results
