"""glasswing: a transparent service mesh dataplane. See `glasswing --help`."""
import argparse
import logging
import sys

from dataplane.errors import GlasswingError
from dataplane.settings import LOCAL_NODE, node_name

from .output import emit, table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glasswing", description=__doc__)
    p.add_argument("--node", default=node_name(),
                   help="node to act on (default: local, this host; or a simulated node)")
    p.add_argument("--store", help="file:///DIR (embedded, default /var/lib/glasswing) or etcd://HOST:PORT; "
                                   "also GLASSWING_STORE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    up = sub.add_parser("up", help="start this node's forwarder (--store etcd://HOST:PORT for many nodes)")
    up.add_argument("--foreground", action="store_true", help="run in the foreground (no daemon)")
    up.add_argument("--relay", default=None,
                    help="how relayed bytes move: engine (default: a C thread of its own, copy for "
                         "small messages, splice once a direction carries bulk), kernel (long-lived "
                         "connections of small messages socket to socket in the kernel, bulk handed "
                         "to the engine), auto (the engine's choice in the event loop), splice or "
                         "copy (in the loop); also GLASSWING_RELAY")
    sub.add_parser("down", help="stop the forwarder and remove everything it made")
    sub.add_parser("status", help="forwarder state")
    sub.add_parser("doctor", help="check that this machine can run the mesh")
    demo = sub.add_parser("demo", help="two simulated nodes, a request and iperf3 through the mesh")
    demo.add_argument("--seconds", type=int, default=5, help="iperf3 run length")

    bp = sub.add_parser("bench", help="benchmarks measured in one run (no subcommand: datapath)")
    bp.add_argument("--quick", action="store_true", help="datapath: fewer and shorter runs")
    bp.add_argument("--out", default="bench-results", help="datapath: directory for bench.json and bench.svg")
    bench = bp.add_subparsers(dest="sub")
    bd = bench.add_parser("datapath", help="iperf3, sockperf and wrk: direct, mesh, socket lb and HAProxy, "
                                           "same node and two nodes; keep-alive HTTP also through ports "
                                           "declared http and undeclared against HAProxy mode http")
    # SUPPRESS: `bench --quick datapath` and `bench datapath --quick` mean the same
    bd.add_argument("--quick", action="store_true", default=argparse.SUPPRESS, help="fewer and shorter runs")
    bd.add_argument("--out", default=argparse.SUPPRESS, help="directory for bench.json and bench.svg")
    bc = bench.add_parser("connections", help="the IM case: many long-lived connections and new connections/s")
    bc.add_argument("--connections", type=int, default=10000, help="long-lived connections to hold")
    bc.add_argument("--hold", type=float, default=30.0, help="seconds to hold them")
    bc.add_argument("--period", type=float, default=5.0, help="seconds between messages per connection")
    bc.add_argument("--quick", action="store_true", help="fewer and smaller rate runs")
    bc.add_argument("--out", default="bench-results", help="directory for connections.json")
    bh = bench.add_parser("http", help="HTTP latency the mesh and HAProxy mode http add at a fixed rate "
                                       "(open loop), and their CPU per 1,000 requests")
    bh.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    bh.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    bh.add_argument("--seconds", type=float, default=20.0, help="length of one run")
    bh.add_argument("--runs", type=int, default=5, help="runs per path (the median is reported)")
    bh.add_argument("--quick", action="store_true", help="3 runs of 10 seconds")
    bh.add_argument("--out", default="bench-results", help="directory for http_latency.json")
    br = bench.add_parser("registry", help="config-to-kernel latency and a big registry, per store backend")
    br.add_argument("--backend", choices=("file", "etcd", "both"), default="both")
    br.add_argument("--services", type=int, default=10000)
    br.add_argument("--endpoints", type=int, default=50000)
    br.add_argument("--samples", type=int, default=5)

    ap = sub.add_parser("apply", help="store services, routes, policies and settings from YAML")
    ap.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    g = sub.add_parser("get", help="show stored objects")
    g.add_argument("kind", help="service, endpoint, route, trafficpolicy or meshsettings")
    g.add_argument("name", nargs="?")
    g.add_argument("-o", "--output", choices=("yaml", "json", "table"), default="table")
    g.add_argument("-n", "--namespace", default="default")
    d = sub.add_parser("delete", help="delete a stored object")
    d.add_argument("kind")
    d.add_argument("name")
    d.add_argument("-n", "--namespace", default="default")

    node = sub.add_parser("node", help="simulated nodes").add_subparsers(dest="sub", required=True)
    n = node.add_parser("add", help="a node: its own namespace on the underlay")
    n.add_argument("name")
    node.add_parser("rm", help="remove a node with no pods").add_argument("name")
    node.add_parser("list", help="list nodes")

    pod = sub.add_parser("pod", help="pods").add_subparsers(dest="sub", required=True)
    a = pod.add_parser("add", help="create a pod (namespace, cgroup, veth) or attach existing ones")
    a.add_argument("name")
    a.add_argument("--ip", help="pod address in the node's pod range (default: next free)")
    a.add_argument("--netns", help="attach an existing namespace (name in /run/netns or /proc/PID/ns/net)")
    a.add_argument("--cgroup", help="attach an existing cgroup v2 directory")
    a.add_argument("--label", action="append", default=[], metavar="K=V")
    a.add_argument("--namespace", default="default", help="the pod's namespace: bare service names "
                                                          "resolve in it")
    a.add_argument("--fail", choices=("open", "closed"), default="open",
                   help="with no forwarder: open translates service addresses in the kernel, closed refuses")
    pod.add_parser("rm", help="remove a pod").add_argument("name")
    pod.add_parser("list", help="list pods")
    e = pod.add_parser("exec", help="run a command in a pod (its cgroup, then its namespace)")
    e.add_argument("name")
    e.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")

    svc = sub.add_parser("service", help="services").add_subparsers(dest="sub", required=True)
    s = svc.add_parser("add", help="a service with a VIP from 198.19.0.0/16 and one from 2001:2:0:ffff::/64")
    s.add_argument("name")
    s.add_argument("--port", action="append", default=[], metavar="PORT[:TARGET][/PROTO]", required=True,
                   help="PROTO is http (HTTP/1.1 proxy) or tcp (opaque L4); without it each "
                        "connection is sniffed for HTTP/1.1")
    s.add_argument("--endpoint", action="append", default=[], metavar="POD[:PORT]")
    s.add_argument("--selector", action="append", default=[], metavar="K=V")
    s.add_argument("--vip", help="service address (default: next free)")
    s.add_argument("--vip6", help="IPv6 service address (default: the one ending in the IPv4 VIP)")
    s.add_argument("--ip-family", choices=("dual", "ipv4", "ipv6"), default="dual",
                   help="which VIPs the service has (default: dual, both)")
    s.add_argument("--socket-lb", action="store_true",
                   help="pick endpoints in connect4 (label glasswing.dev/lb=socket): no forwarder on the "
                        "path, and the server sees the client's own address")
    svc.add_parser("rm", help="remove a service").add_argument("name")
    svc.add_parser("list", help="list services")
    _json_everywhere(p)
    return p


def _json_everywhere(parser):
    """`--json` works after any subcommand too (`glasswing status --json`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--json" in a.option_strings for a in child._actions):
                    child.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                       help="machine-readable output")
                _json_everywhere(child)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return run(args) or 0
    except GlasswingError as e:
        print(f"glasswing: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run(args):
    from dataplane.node.control import Control
    from dataplane.store import names

    ctl = Control(node=args.node, store=args.store)
    if args.node != LOCAL_NODE:
        names.name("node", args.node)
    cmd, sub = args.cmd, getattr(args, "sub", None)
    if cmd == "up":
        if args.foreground:
            ctl.require_root()
            from dataplane.kernel.programs import check_bpf_available
            from dataplane.node.process import run as run_forwarder
            from dataplane.relay.modes import default as default_relay
            check_bpf_available()
            return run_forwarder(ctl.store_url, args.node, ctl.run_root, relay=args.relay or default_relay())
        st = ctl.up(relay=args.relay)
        emit(st, args.json, lambda s: print(f"forwarder for node {s['node']} running, pid {s['pid']}, "
                                            f"{len(s['pods'])} pods, relay {s['relay']} ({s['pump']} pump)"))
    elif cmd == "down":
        done = ctl.down()
        emit(done, args.json, lambda d: print("\n".join(d) if d else "nothing was running"))
    elif cmd == "status":
        st = ctl.status()
        emit(st, args.json, _print_status)
        return 0 if st.get("running") else 3
    elif cmd == "doctor":
        from .doctor import doctor
        return doctor(ctl, args.json)
    elif cmd == "demo":
        from lab.demo import run_demo
        return run_demo(seconds=args.seconds)
    elif cmd == "bench" and sub in (None, "datapath"):
        ctl.require_root()
        from lab.bench import datapath as bench
        bench.run(args.quick, args.out)
    elif cmd == "bench" and sub == "connections":
        ctl.require_root()
        for name in ("connections", "hold", "period"):
            if getattr(args, name) <= 0:
                raise GlasswingError(f"--{name} must be positive, not {getattr(args, name)}")
        from lab.bench import connections as bench_connections
        bench_connections.run(args.quick, args.connections, args.hold, args.period, args.out)
    elif cmd == "bench" and sub == "http":
        ctl.require_root()
        for name in ("rate", "connections", "seconds", "runs"):
            if getattr(args, name) <= 0:
                raise GlasswingError(f"--{name} must be positive, not {getattr(args, name)}")
        if args.quick:
            args.runs, args.seconds = 3, 10.0
        from lab.bench import http_latency as bench_http_latency
        bench_http_latency.run(args.rate, args.connections, args.seconds, args.runs, args.out)
    elif cmd == "bench":
        ctl.require_root()
        from lab.bench import registry as bench_registry
        backends = ("file", "etcd") if args.backend == "both" else (args.backend,)
        res = bench_registry.run(backends, args.services, args.endpoints, args.samples,
                                 say=(lambda m: None) if args.json else print)
        emit(res, args.json, _print_bench_registry)
    elif cmd in ("apply", "get", "delete"):
        return _config(ctl, args, cmd)
    elif cmd == "node":
        return _node(ctl, args, sub)
    elif cmd == "pod":
        return _pod(ctl, args, sub)
    elif cmd == "service":
        return _service(ctl, args, sub)


def _print_status(s):
    if not s.get("running"):
        print(f"forwarder for node {s['node']}: not running")
        return
    print(f"forwarder for node {s['node']}: running, pid {s['pid']}, store revision {s['revision']}")
    print(f"  pods: {', '.join(s['pods']) or '-'}; services: {s['services']}; "
          f"connections: {s['connections']}; relay: {s['relay']} ({s.get('pump')} pump), pipes lent: {s.get('pipes', {}).get('lent')}")
    h = s.get("http") or {}
    if h.get("requests"):
        print(f"  http: {h['requests']} requests, {h.get('retries', 0)} retries, "
              f"{h.get('pool_reuses', 0)} pooled reuses, {h.get('switched', 0)} upgrades")
    _print_server_first(s)
    for k, v in (s.get("errors") or {}).items():
        print(f"  error: {k}: {v}")


def _print_server_first(s):
    """The service ports learned as server-first: their connections skip the sniff."""
    marks = s.get("server_first") or []
    skipped = (s.get("stats") or {}).get("sniff_skipped", 0)
    if not marks and not skipped:
        return
    print(f"  server-first ports (relayed without sniffing; {skipped} connections skipped the sniff):"
          + ("" if marks else " -"))
    for m in marks:
        left = m["expires_in_s"]
        when = "probing" if m.get("probing") else (f"recheck in {left:.0f}s" if left > 0 else "recheck due")
        print(f"    {m['service']}:{m['port']}  learned {m['age_s']:.0f}s ago, {m['skipped']} skipped, {when}")


def _config(ctl, args, cmd):
    from dataplane.store import schema as cs
    from dataplane.store import config as store
    if cmd == "apply":
        ctl.require_root()
        docs = cs.load_all(args.filename)
        done = ctl.apply(docs)
        emit([{"kind": k, "key": key, "action": a} for k, key, a in done], args.json,
             lambda rows: [print(f"{r['kind'].lower()}/{r['key']} {r['action']}") for r in rows])
        return 0
    kind = store.kind_of(args.kind)
    if args.name and "/" not in args.name and kind != "MeshSettings":
        args.name = f"{args.namespace}/{args.name}"
    if cmd == "delete":
        ctl.require_root()
        key = ctl.delete(kind, args.name)
        print(f"{kind.lower()}/{key} deleted")
        return 0
    docs = store.get(ctl.store.read(), kind, args.name)
    out = "json" if args.json else args.output
    if out == "yaml":
        print(cs.dump_yaml(docs), end="")
    elif out == "json":
        print(cs.dump_json(docs), end="")
    else:
        table([[d["metadata"].get("namespace", "-"), d["metadata"]["name"], _summary(d)] for d in docs],
              ["NAMESPACE", "NAME", "SPEC"])
    return 0


def _print_bench_registry(rows):
    print()
    table([[r["store"], r["small_apply_to_map_ms"], r["services"], r["endpoints"], r["bulk_apply_s"],
            r["bulk_apply_to_maps_s"], r["rss_idle_mb"], r["rss_loaded_mb"], r["change_to_map_ms"]] for r in rows],
          ["STORE", "APPLY->MAP ms", "SERVICES", "ENDPOINTS", "BULK APPLY s", "BULK->MAPS s",
           "RSS IDLE MB", "RSS LOADED MB", "CHANGE->MAP ms"])


def _summary(d) -> str:
    spec = d.get("spec", {})
    if d["kind"] == "Service":
        ports = ",".join(f"{p['port']}:{p.get('targetPort', p['port'])}" for p in spec.get("ports", []))
        vips = " ".join(v for v in (spec.get("vip"), spec.get("vip6")) if v) or "-"
        return f"{vips} {ports}"
    if d["kind"] == "Endpoint":
        addrs = "/".join(a for a in (spec.get("address"), spec.get("address6")) if a)
        return f"{spec.get('service')} {addrs}:{spec.get('port')} {spec.get('health', '')}"
    return ", ".join(f"{k}" for k in spec)


def _node(ctl, args, sub):
    if sub == "add":
        rec = ctl.node_add(args.name)
        emit(rec, args.json, lambda r: print(f"node {args.name}: {r['ip']}, pods {r['pod_cidr']}"))
    elif sub == "rm":
        ctl.node_rm(args.name)
    else:
        doc = ctl.store.read()
        rows = [[n, r.get("ip") or "-", r["pod_cidr"], "yes" if ctl.forwarder_pid(n, doc) else "no"]
                for n, r in sorted(doc["nodes"].items())]
        emit(doc["nodes"], args.json, lambda _: table(rows, ["NODE", "ADDRESS", "PODS", "FORWARDER"]))


def _pod(ctl, args, sub):
    from dataplane.store import names
    if sub == "add":
        rec = ctl.pod_add(args.name, address=args.ip, ns=args.netns, cgroup=args.cgroup,
                          labels=names.labels(args.label), fail_mode=args.fail,
                          namespace=args.namespace)
        emit(rec, args.json, lambda r: print(f"pod {args.name}: {' '.join(filter(None, (r['ip'], r.get('ip6'))))} "
                                             f"on node {r['node']} (netns {r['netns']})"))
    elif sub == "rm":
        ctl.pod_rm(args.name)
    elif sub == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        ctl.pod_exec(args.name, argv)
    else:
        doc = ctl.store.read()
        rows = [[n, p["node"], p["ip"], p.get("ip6") or "-", p["netns"], ",".join(f"{k}={v}" for k, v in p["labels"].items()) or "-",
                 p["fail_mode"]] for n, p in sorted(doc["pods"].items())]
        emit(doc["pods"], args.json, lambda _: table(rows, ["POD", "NODE", "ADDRESS", "ADDRESS6", "NETNS", "LABELS", "FAIL"]))


def _ports(ports, arrow, sep) -> str:
    """80->8080/http: the port mappings with their declared protocol (none: sniffed)."""
    return sep.join(f"{m['port']}{arrow}{m['target']}" + (f"/{m['protocol']}" if m.get("protocol") else "")
                    for m in ports)


def _service(ctl, args, sub):
    from dataplane.store import names
    if sub == "add":
        rec = ctl.service_add(args.name, ports=args.port, endpoints=args.endpoint,
                              selector=names.labels(args.selector) or None, vip=args.vip,
                              socket_lb=args.socket_lb, vip6=args.vip6, ip_family=args.ip_family)
        ports = _ports(rec["ports"], "->", ", ")
        emit(rec, args.json, lambda r: print(f"service {args.name}: {_vips(r, ', ')} ports {ports}"))
    elif sub == "rm":
        ctl.service_rm(args.name)
    else:
        from dataplane.store import services as svcs
        doc = ctl.store.read()
        rows = []
        for n, s in sorted(doc["services"].items()):
            eps = {f"{p}:{port}" for m in s["ports"] for p, _r, port in svcs.endpoints(doc, s, m)}
            rows.append([n, s["vip"] or "-", s.get("vip6") or "-", _ports(s["ports"], ":", ","),
                         ",".join(sorted(eps)) or "-"])
        emit(doc["services"], args.json, lambda _: table(rows, ["SERVICE", "VIP", "VIP6", "PORTS", "ENDPOINTS"]))


def _vips(rec, sep) -> str:
    """A service record's VIPs, IPv4 first; a record made before IPv6 VIPs has no vip6."""
    return sep.join(v for v in (rec.get("vip"), rec.get("vip6")) if v)
