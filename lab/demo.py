"""`glasswing demo` (and `make demo`): two simulated nodes on the embedded
store, a request through the mesh, and iperf3 through the mesh beside the
same iperf3 direct, pod to pod. Prints the table and cleans up."""
import statistics
import sys
import time

from lab.bench.run import iperf3_gbps
from lab.cluster import Lab

SERVER = "import http.server as h, sys\n" \
         "class H(h.BaseHTTPRequestHandler):\n" \
         "    def do_GET(self):\n" \
         "        b = ('hello from %s, you are %s\\n' % (sys.argv[1], self.client_address[0])).encode()\n" \
         "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n" \
         "        self.end_headers(); self.wfile.write(b)\n" \
         "    def log_message(self, *a): pass\n" \
         "h.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"


def say(msg):
    print(msg, flush=True)


def iperf(lab, pod, dest, seconds):
    r = lab.run(pod, ["iperf3", "-J", "-c", dest, "-t", str(seconds)], timeout=seconds + 30)
    return iperf3_gbps(r, dest)


def wait_port(lab, pod, ip, port, timeout=10):
    deadline = time.monotonic() + timeout
    probe = f"import socket; socket.create_connection(('{ip}', {port}), 1).close()"
    while time.monotonic() < deadline:
        if lab.run(pod, [sys.executable, "-c", probe]).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{ip}:{port} in pod {pod} did not start listening")


def run_demo(seconds: int = 5, runs: int = 3) -> int:
    with Lab("gwdemo") as lab:
        say("building: nodes n1 and n2, pods client and web1 on n1, web2 on n2")
        lab.node("n1")
        lab.node("n2")
        lab.pod("client", "n1")
        w1 = lab.pod("web1", "n1", labels={"app": "web"})
        w2 = lab.pod("web2", "n2", labels={"app": "web"})
        web = lab.service("web", ports=["80:8080"], selector={"app": "web"})
        near = lab.service("iperf-near", ports=["5201"], endpoints=["web1"])
        far = lab.service("iperf-far", ports=["5201"], endpoints=["web2"])
        lab.up("n1")
        lab.up("n2")
        for name, rec in (("web1", w1), ("web2", w2)):
            lab.spawn(name, [sys.executable, "-c", SERVER, name])
            lab.spawn(name, ["iperf3", "-s", "-B", rec["ip"], "-p", "5201"])
            wait_port(lab, "client", rec["ip"], 8080)
            wait_port(lab, "client", rec["ip"], 5201)
        say(f"\nservice web = {web['vip']}:80 -> web1, web2 port 8080")
        for _ in range(2):
            r = lab.run("client", ["curl", "-sS", "-m", "5", f"http://{web['vip']}/"])
            say(f"  client$ curl http://{web['vip']}/  ->  {(r.stdout or r.stderr).strip()}")
        paths = [("same node", w1["ip"], near["vip"]), ("two nodes", w2["ip"], far["vip"])]
        say(f"\niperf3, {runs} runs of {seconds}s each, median Gbit/s (client pod on n1):")
        rows = []
        for label, direct_ip, vip in paths:
            d = [iperf(lab, "client", direct_ip, seconds) for _ in range(runs)]
            m = [iperf(lab, "client", vip, seconds) for _ in range(runs)]
            rows.append((label, statistics.median(d), statistics.median(m)))
        say(f"  {'path':<12} {'direct':>8} {'mesh':>8} {'mesh/direct':>12}")
        for label, d, m in rows:
            say(f"  {label:<12} {d:>8.2f} {m:>8.2f} {m / d:>12.2f}")
        say("\ncleaning up")
    say("done: no pods, nodes, programs or forwarders left")
    return 0
