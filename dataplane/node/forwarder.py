"""The node forwarder: one process per node serving every pod on it.

It owns, and undoes in reverse on stop: the hook programs and their cgroup
attachments, the pinned maps, a listener on 127.0.0.1:15001 inside each
pod's namespace, the tunnel listener on NODE_IP:15008, its own cgroup, the
pidfile and the admin socket. It watches the store and reconciles pods and
maps with it without restarting.

An outbound connection is served by the declared protocol of its service
port (catalog.ServicePort.protocol, from the ServicePort's `protocol`):
  "tcp"   opaque L4: admitted, balanced and retried per connection, relayed
          raw at once (the fast path: nothing waits for the client's bytes).
  "http"  HTTP/1.1 (http_proxy.HttpSession): routes, splits, retries,
          timeouts, rate limit, faults and the breaker apply per request.
  ""      undeclared: http_proxy.detect() reads the client's first bytes for
          at most http_sniff.SNIFF_DEADLINE (100 ms). HTTP/1.1 goes to a
          session; anything else, including a server-first protocol
          (PostgreSQL, SMTP, a greeting echo server) whose client sends
          nothing, is relayed opaque with the sniffed bytes passed on first.
A client-first non-HTTP protocol is decided on its first bytes, so only
server-first protocols pay the deadline, once per connection.

HTTP sessions reach endpoints through MeshUpstreams (the same balancer,
outlier detector and tunnel as L4) and share one UpstreamPool of idle
upstream connections. Their policy (http_proxy.ServicePolicy) is rebuilt
from the Route and TrafficPolicy objects on every reconcile and asked per
request, so `glasswing apply` changes routing without a restart; a 101
(WebSocket) or a 2xx to CONNECT hands both sockets to a raw Relay.
"""
import asyncio
import json
import logging
import os
import resource
import signal
import socket
import time

from dataplane.kernel import maps as bpf_maps
from dataplane.host import cgroups
from dataplane.host import netns
from dataplane.host import topology
from dataplane.store import services as svcs
from dataplane.tunnel import codec as tc
from dataplane.node.admin import serve as serve_admin
from dataplane.kernel.programs import Programs, detach_stale
from dataplane.kernel.map_sync import MapState, ServiceIds, desired
from dataplane.store.catalog import Catalog
from dataplane.policy.connect_retry import classify
from dataplane.relay import modes as relay_modes
from dataplane.relay.engine_relays import EngineRelays
from dataplane.relay.idle_reaper import IdleReaper, interval as idle_interval
from dataplane.relay.poller import Poller
from dataplane.relay.relay import Relay
from dataplane.settings import (DNS_PORT, LEASE_TTL, OUTBOUND_IP, OUTBOUND_PORT, PIN_ROOT, PREAMBLE_TIMEOUT,
                       TUNNEL_PORT)
from dataplane.host.sockets import listener, marked_socket, original_dst, reset
from dataplane.tunnel.streams import StreamRejected, connect_in_pod, dial, open_tunnel, read_preamble
from dataplane.dns import names as dns_names
from dataplane.store import registry
from dataplane.policy.state import Policies
from dataplane.dns.resolver import Resolver
from dataplane.http.exchange import BAD_RESPONSE, TIMEOUT
from dataplane.http.pool import UpstreamPool
from dataplane.http.proxy import (HTTP, ConnectFailed, HttpSession, HttpSettings, NoEndpoint, detect,
                         new_metrics)
from dataplane.http.proxy import ServicePolicy as HttpPolicy
from dataplane.http.route import CONNECT_FAILURE, RESET, RouteTable, subset_matches
from dataplane.http.trace_context import new_trace_id
from dataplane.policy.health import Checker
from dataplane.store.kv import Compacted, Txn
from dataplane.store.kv_open import open_kv
from dataplane.store.registry import Registry
from dataplane.host.sockets import udp_socket

ACCEPT_BATCH = 64       # connections taken per readiness, then other callbacks get a turn
ACCEPT_BACKOFF = 0.1    # seconds without accepting after EMFILE and the like
log = logging.getLogger("glasswing.forwarder")


def node_paths(run_root: str, cluster: str, node: str) -> dict:
    cluster = cluster or "none"  # an empty store has no cluster id yet
    run = os.path.join(run_root, cluster, node)
    return {"run": run, "pidfile": os.path.join(run, "forwarder.pid"),
            "admin": os.path.join(run, "admin.sock"), "log": os.path.join(run, "forwarder.log"),
            "pins": os.path.join(PIN_ROOT, cluster, node)}


class PodState:
    """What the forwarder holds for one pod on its node."""

    def __init__(self, name, rec):
        self.name, self.rec = name, rec
        self.ns_fd = netns.open_fd(rec["netns"])
        self.cgroup = rec["cgroup"]
        self.cgroup_id = cgroups.cgroup_id(self.cgroup)
        self.namespace = rec.get("namespace", "default")
        self.listener = None
        self.task = None
        self.dns_sock = self.dns_task = self.dns = None  # the resolver in this pod

    def close(self):
        for t in (self.task, self.dns_task):
            if t:
                t.cancel()
        if self.listener:
            self.listener.close()
        if self.dns:
            self.dns.close()
        elif self.dns_sock:
            self.dns_sock.close()
        os.close(self.ns_fd)


class Forwarder:
    def __init__(self, store: Registry, node: str, run_root: str, home_fd: int,
                 relay: str = relay_modes.BUILT_IN_DEFAULT):
        self.store, self.node, self.home_fd = store, node, home_fd
        self.relay_mode = relay_modes.check(relay)
        self.doc = store.read()
        self.lease = 0
        self.store_lost = None  # monotonic time the store went away
        self.catalog = Catalog(self.doc)
        self.cluster = self.doc["cluster"]
        self.paths = node_paths(run_root, self.cluster, node)
        self.cgroup = topology.forwarder_cgroup(self.cluster, node)
        self.programs = None
        self.maps = None
        self.svc_ids = ServiceIds()
        self.checkers = {}  # endpoint key -> (Checker, its check settings)
        self.pods = {}
        self.relays = RelaySet(self._relay_gone)
        self.tasks = set()
        self.poller = None  # one epoll for every relayed socket, made with the first relay
        self.engine = None  # EngineRelays: the relay engine's thread, made with its first relay
        self.policies = Policies()
        self.attempts = {}  # trace -> (app socket, policy.Attempt) of open outbound connections
        self.reaper = IdleReaper(clock=time.monotonic)
        self.resolver = Resolver(self._dns_lookup, socket_factory=self._upstream_socket)
        self.stopping = asyncio.Event()
        self.stats = {"accepted": 0, "reset": 0, "tunnel_in": 0, "rejected": 0,
                      **{f"refused_{r}": 0 for r in REFUSALS},
                      "connect_failures": 0, "connect_retries": 0, "outlier_ejections": 0, "idle_closed": 0,
                      "sniffed_http": 0, "sniffed_opaque": 0, "http_sessions": 0}
        self.errors = {}
        self.servers = []
        self.routes = {}  # service key -> http_route.RouteTable, from the Route objects
        self.http_policies = {}  # (service, port) -> HttpPolicy, made on first use per reconcile
        self.http_pool = None  # idle upstream HTTP connections, made with the first session
        self.http_metrics = new_metrics()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self):
        os.makedirs(self.paths["run"], exist_ok=True)
        cgroups.ensure(self.cgroup)
        cgroups.join(self.cgroup)
        self.programs = Programs(self.paths["pins"])
        self.programs.load()
        self.maps = MapState(self.paths["pins"])
        self.maps.set_config(cgroups.cgroup_id(self.cgroup))
        self.programs.attach(self.cgroup, "forwarder")
        node = self.doc["nodes"].get(self.node) or {}
        tunnel_ip = node.get("ip") or "127.0.0.1"
        self.tunnel = listener(tunnel_ip, TUNNEL_PORT)
        self._spawn(self._accept_loop(self.tunnel, self._tunnel_stream))
        self.lease = self.store.kv.grant(LEASE_TTL)
        self.reconcile(self.store.read())
        self.servers.append(await serve_admin(self.paths["admin"], self._admin))
        self._spawn(self._watch())
        self._spawn(self._keepalive())
        self._spawn(self._sweep())
        with open(self.paths["pidfile"], "w") as f:
            f.write(f"{os.getpid()}\n")
        log.info("forwarder for node %s ready (tunnel %s:%d)", self.node, tunnel_ip, TUNNEL_PORT)

    async def stop(self) -> None:
        """Undo everything start made, in reverse; safe on a partial start."""
        for s in self.servers:
            s.close()
        for t in list(self.tasks):
            t.cancel()
        if getattr(self, "tunnel", None):
            self.tunnel.close()
        for r in list(self.relays):
            r.abort()
        if self.poller:
            self.poller.close()
        if self.engine:
            self.engine.close()
        if self.http_pool:
            self.http_pool.close()
        for checker, _check in self.checkers.values():
            checker.stop()
        for name in list(self.pods):
            self._drop_pod(name)
        self.resolver.close()
        if self.lease:  # our endpoints leave the store now, not when the lease runs out
            try:
                self.store.kv.revoke(self.lease)
            except Exception as e:  # noqa: BLE001 - the lease expires by itself
                log.warning("revoking lease: %s", e)
        if self.programs:
            self.programs.close()
        if self.maps:
            self.maps.close()
        bpf_maps.unpin_all(self.paths["pins"])
        try:
            cgroups.join(cgroups.cgroup2_root())
            cgroups.remove(self.cgroup, kill=False)
            os.rmdir(os.path.dirname(self.cgroup))
        except OSError:
            pass
        for p in (self.paths["pidfile"], self.paths["admin"]):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def _spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    # ------------------------------------------------------------ store

    async def _watch(self):
        """Follow the store's changes; keep serving the last good config while
        it is away, and resync when it returns."""
        backoff = 0.1
        while True:
            try:
                if self.store_lost is not None:
                    self.reconcile(await asyncio.to_thread(self.store.read))
                    log.info("store is back after %.1fs", time.monotonic() - self.store_lost)
                    self.store_lost = None
                    self.errors.pop("store", None)
                events = await asyncio.to_thread(self.store.kv.watch, registry.PREFIX,
                                                 self.doc["revision"], 1.0)
                backoff = 0.1
                if events:
                    for ev in events:
                        if ev.kind == "put":
                            registry.apply_put(self.doc, ev.key, ev.value)
                        else:
                            registry.apply_delete(self.doc, ev.key)
                        self.doc["revision"] = ev.revision
                    self.reconcile(self.doc)
            except Compacted:
                self.reconcile(await asyncio.to_thread(self.store.read))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - store away: serve what we have
                if self.store_lost is None:
                    self.store_lost = time.monotonic()
                    log.error("store unavailable, serving the last good config: %s", e)
                self.errors["store"] = f"unavailable for {time.monotonic() - self.store_lost:.0f}s: {e}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _keepalive(self):
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            try:
                if await asyncio.to_thread(self.store.kv.keepalive, self.lease) == 0:
                    # the lease ran out while the store was away: publish anew
                    self.lease = await asyncio.to_thread(self.store.kv.grant, LEASE_TTL)
                    for key in self.published_keys():
                        registry.apply_delete(self.doc, key)
                    self._publish()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - _watch reports the store's state
                log.debug("keepalive: %s", e)

    def reconcile(self, doc: dict) -> None:
        self.doc = doc
        want = {n: p for n, p in doc["pods"].items() if p["node"] == self.node}
        for name in [n for n in self.pods if n not in want or want[n]["cgroup"] != self.pods[n].cgroup]:
            self._drop_pod(name)
        for name, rec in want.items():
            if name not in self.pods:
                try:
                    self._add_pod(name, rec)
                    self.errors.pop(f"pod {name}", None)
                except Exception as e:  # noqa: BLE001 - one broken pod must not stop the others
                    self.errors[f"pod {name}"] = str(e)
                    log.error("pod %s: %s", name, e)
            else:
                self.pods[name].rec = rec
        self._publish()
        self._set_catalog(Catalog(doc))
        settings = doc["config"]["meshsettings"].get("-/mesh")
        upstream = settings.spec.upstream_dns if settings else ""
        host, _, port = upstream.rpartition(":")
        self.resolver.upstream = (host, int(port)) if upstream else None
        ids = {n: p.cgroup_id for n, p in self.pods.items()}
        changed = self.maps.apply(desired(self.catalog, doc, self.node, ids, self.svc_ids))
        log.debug("revision %s: %d map entries changed", doc["revision"], changed)

    def _set_catalog(self, catalog) -> None:
        """A new catalog, and the policy state brought in line with it."""
        self.catalog = catalog
        node = self.doc["nodes"].get(self.node) or {}
        self.policies.update(catalog, self.doc, local_zone=node.get("zone", ""))
        self.routes = self._route_tables(self.doc)
        self.http_policies = {}  # sessions ask per request, so the next request sees the change

    def _route_tables(self, doc) -> dict:
        """{service key: RouteTable}. A Route names a service of its own namespace; when two
        name the same one, the first by key wins (as for TrafficPolicy)."""
        tables = {}
        for rkey in sorted(doc["config"].get("route", {})):
            msg = doc["config"]["route"][rkey]
            skey = f"{rkey.split('/', 1)[0]}/{msg.spec.service}"
            if skey in tables:
                continue
            try:
                tables[skey] = RouteTable(msg.spec)
                self.errors.pop(f"route {rkey}", None)
            except Exception as e:  # noqa: BLE001 - a bad route must not stop the others
                self.errors[f"route {rkey}"] = str(e)
        return tables

    def _http_policy(self, service: str, port: int) -> HttpPolicy:
        """The current HTTP policy of a service port: asked by sessions per request."""
        hp = self.http_policies.get((service, port))
        if hp is None:
            svc = self.policies.port(service, port).service
            hp = self.http_policies[(service, port)] = HttpPolicy(
                routes=self.routes.get(service), rate_limit=svc.bucket,
                retry_budget=svc.budget, breaker=svc.breaker)
        return hp

    async def _sweep(self):
        """Now and then: close relays idle past their service's idle timeout,
        and release the policy hold of outbound connections that ended
        without telling us (a backstop for _relay_gone)."""
        backstop = 0.0
        while True:
            timeouts = [s.idle_timeout for s in self.policies.explicit.values()]
            await asyncio.sleep(idle_interval(timeouts))
            try:
                relays = list(self.relays) if any(timeouts) else ()
                for r in self.reaper.scan(relays, lambda s: self.policies.settings(s).idle_timeout):
                    self.stats["idle_closed"] += 1
                    log.info("service %s: closing a connection idle for %.1fs", r.info[0],
                             self.policies.settings(r.info[0]).idle_timeout)
                    r.close()
                if time.monotonic() >= backstop:
                    backstop = time.monotonic() + 5.0
                    relayed = {r.info[2] for r in self.relays if r.info}  # the engine's sockets are detached
                    for trace in [t for t, (conn, _a) in self.attempts.items()
                                  if conn.fileno() < 0 and t not in relayed]:
                        self.attempts.pop(trace)[1].close()
            except Exception as e:  # noqa: BLE001 - the sweep must go on
                log.error("sweep: %s", e)

    def _relay_gone(self, r) -> None:
        """A relay closed: an outbound connection gives back its policy hold
        (breaker slot, least-request count)."""
        if not r.info:
            return
        held = self.attempts.get(r.info[2])
        if held is not None and held[0] is r.a:
            del self.attempts[r.info[2]]
            held[1].close()

    def _publish(self) -> None:
        """Register this node's pods as endpoints of the services that select
        them, under our lease; only what changed is written."""
        want = {}
        checks = {}
        zone = (self.doc["nodes"].get(self.node) or {}).get("zone", "")
        for key, svc in self.doc["services"].items():
            static = {e["pod"]: e for e in svc["endpoints"] if e.get("pod")}
            for m in svc["ports"]:
                for pod, rec, port in svcs.endpoints(self.doc, svc, m):
                    if rec["node"] != self.node or pod not in self.pods:
                        continue
                    ekey = f"{registry.PREFIX}endpoints/{self.node}/{key}/{m['port']}/{pod}:{port}"
                    health = "healthy"
                    if svc.get("health_check"):
                        checks[ekey] = (svc["health_check"], pod, rec["ip"], port)
                        cur = self.checkers.get(ekey)
                        health = cur[0].state.status if cur and cur[1] == svc["health_check"] else "unknown"
                    want[ekey] = json.dumps({"service": key, "service_port": m["port"], "pod": pod,
                                             "node": self.node, "ip": rec["ip"], "port": port,
                                             "health": health,
                                             "zone": static.get(pod, {}).get("zone") or rec.get("zone") or zone,
                                             # subsets (canary splits) select by these
                                             "labels": {**(rec.get("labels") or {}),
                                                        **(static.get(pod, {}).get("labels") or {})},
                                             "weight": static.get(pod, {}).get("weight") or 1},
                                            sort_keys=True).encode()
        self._sync_checkers(checks)
        mine = f"{registry.PREFIX}endpoints/{self.node}/"
        have = {k: json.dumps(v, sort_keys=True).encode() for k, v in self.doc["endpoints"].items()
                if k.startswith(mine)}
        txn = Txn(puts={k: (v, self.lease) for k, v in want.items() if have.get(k) != v},
                  deletes=[k for k in have if k not in want])
        if not (txn.puts or txn.deletes):
            return
        try:
            rev = self.store.kv.commit(txn)
        except Exception as e:  # noqa: BLE001 - retried on the next change or keepalive
            self.errors["publish"] = str(e)
            return
        self.errors.pop("publish", None)
        for k, (v, _lease) in txn.puts.items():
            registry.apply_put(self.doc, k, v)
        for k in txn.deletes:
            registry.apply_delete(self.doc, k)
        self.doc["revision"] = max(self.doc["revision"], rev)

    def _add_pod(self, name, rec):
        pod = PodState(name, rec)
        try:
            pod.listener = listener(OUTBOUND_IP, OUTBOUND_PORT, pod.ns_fd, self.home_fd)
            pod.dns_sock = udp_socket(OUTBOUND_IP, DNS_PORT, pod.ns_fd, self.home_fd)
            self.programs.attach(pod.cgroup, "pod")
        except BaseException:
            pod.close()
            raise
        pod.task = self._spawn(self._accept_loop(pod.listener, lambda c: self._outbound(pod, c)))
        pod.dns_task = self._spawn(self._serve_dns(pod))
        self.pods[name] = pod

    async def _serve_dns(self, pod):
        # queries that arrive before this runs wait in the bound socket
        pod.dns = await self.resolver.serve(pod.dns_sock, pod.name)

    def _drop_pod(self, name):
        pod = self.pods.pop(name)
        self.programs.detach(pod.cgroup)
        pod.close()

    # ------------------------------------------------------------ streams

    async def _accept_loop(self, lsock, handler):
        """Accept on lsock until cancelled: a readiness callback takes every pending
        connection at once (no future and reader round trip per accept)."""
        loop = asyncio.get_running_loop()
        fd = lsock.fileno()
        loop.add_reader(fd, self._accept_ready, loop, lsock, handler)
        try:
            await loop.create_future()
        finally:
            loop.remove_reader(fd)

    def _accept_ready(self, loop, lsock, handler):
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _peer = lsock.accept()
            except BlockingIOError:
                return
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS: back off instead of spinning
                self.errors["accept"] = f"{e.strerror} (backing off {ACCEPT_BACKOFF}s)"
                log.warning("accept on %s: %s", lsock.getsockname(), e)
                loop.remove_reader(lsock.fileno())
                loop.call_later(ACCEPT_BACKOFF, self._accept_resume, loop, lsock, handler)
                return
            conn.setblocking(False)
            self.stats["accepted"] += 1
            self._spawn(handler(conn))

    def _accept_resume(self, loop, lsock, handler):
        if lsock.fileno() >= 0:  # not closed meanwhile
            loop.add_reader(lsock.fileno(), self._accept_ready, loop, lsock, handler)

    def _relay(self, a, b, info, to_b=b"", to_a=b""):
        """info: (service, endpoint, trace, source)."""
        mode = relay_modes.ENGINE_MODES.get(self.relay_mode)
        if mode:
            if self.engine is None:
                self.engine = EngineRelays(asyncio.get_running_loop(),
                                           kernel=self.programs.relay if self.programs else None)
            self.relays.add(self.engine.relay(a, b, to_b, to_a, self.relays.discard, info, mode))
            return
        if self.poller is None:
            self.poller = Poller(asyncio.get_running_loop())
        r = Relay(self.poller, a, b, to_b=to_b, to_a=to_a,
                  on_close=self.relays.discard, info=info, mode=self.relay_mode)
        self.relays.add(r)
        r.start()

    def _reset(self, conn, why):
        self.stats["reset"] += 1
        log.info("reset: %s", why)
        reset(conn)

    def _refuse(self, conn, reason, why):
        self.stats[f"refused_{reason}"] += 1
        self._reset(conn, why)

    async def _outbound(self, pod: PodState, conn):
        dst = original_dst(conn)
        if dst is None:
            return self._refuse(conn, "no_service", f"pod {pod.name}: no original destination")
        sp = self.catalog.service_port(*dst)
        if sp is None:
            return self._refuse(conn, "no_service", f"pod {pod.name}: {dst[0]}:{dst[1]} is no service port")
        prefix = b""
        if sp.protocol != "tcp":
            kind = HTTP
            if sp.protocol != "http":
                kind, prefix = await detect(conn)
                self.stats[f"sniffed_{kind}"] += 1
                sp = self.catalog.service_port(*dst)  # the store may have changed meanwhile
                if sp is None:
                    return self._refuse(conn, "no_service", f"pod {pod.name}: {dst[0]}:{dst[1]} is no service port")
            if kind == HTTP:
                return await self._http(pod, conn, sp, dst, prefix)
        await self._opaque(pod, conn, sp, dst, prefix)

    async def _http(self, pod, conn, sp, dst, prefix):
        """Serve one client connection as HTTP/1.1 until it closes or switches protocols."""
        self.stats["http_sessions"] += 1
        if self.http_pool is None:
            self.http_pool = UpstreamPool(asyncio.get_running_loop())
        name, port = sp.service, sp.port
        upstreams = MeshUpstreams(self, pod, dst, source_key(pod, conn))

        def on_switch(client, upstream, to_upstream, to_client):
            """After a 101 (WebSocket) or a 2xx to CONNECT: raw bytes both ways from now on,
            for as long as the app keeps the connection (idle timeout only if configured)."""
            ep = upstreams.last[1] if upstreams.last else None
            try:
                self._relay(client, upstream, (name, ep, new_trace_id(self.policies.rng), pod.name),
                            to_b=to_upstream, to_a=to_client)
            except Exception as e:  # noqa: BLE001 - this connection fails, the forwarder goes on
                upstream.close()
                self._reset(client, f"service {name}: relay after upgrade failed to start: {e}")

        session = HttpSession(conn, name, port, upstreams, prefix=prefix,
                              policy=lambda: self._http_policy(name, port), pool=self.http_pool,
                              settings=HTTP_SETTINGS, on_switch=on_switch, metrics=self.http_metrics,
                              rng=self.policies.rng)
        await session.run()

    async def _opaque(self, pod, conn, sp, dst, to_upstream=b""):
        """An L4 connection: admitted, connected (with retries) and relayed raw; to_upstream
        holds the client bytes read while sniffing, sent upstream first."""
        name = sp.service
        port = self.policies.port(name, sp.port)
        refused = port.service.admit()
        if refused:
            return self._refuse(conn, refused, f"service {name}: {refused}")
        key = source_key(pod, conn) if port.settings.load_balancer == "ring_hash" else None
        attempt = self.policies.attempt(port, sp.endpoints, key)
        trace = new_trace_id(self.policies.rng)
        try:
            upstream, to_app = await self._connect_upstream(pod, sp, dst, attempt, trace)
        except BaseException:
            attempt.close()
            conn.close()
            raise
        if upstream is None:
            attempt.close()
            return self._refuse(conn, to_app[0], to_app[1])
        self.attempts[trace] = (conn, attempt)
        try:
            self._relay(conn, upstream, (name, attempt.endpoint, trace, pod.name),
                        to_b=to_upstream, to_a=to_app)
        except Exception as e:  # noqa: BLE001 - this connection fails, the forwarder goes on
            self.attempts.pop(trace, None)
            attempt.close()
            upstream.close()
            self._reset(conn, f"service {name}: relay failed to start: {e}")

    async def _connect_upstream(self, pod, sp, dst, attempt, trace):
        """(upstream socket, bytes for the app) once a connect succeeded, or
        (None, (refusal reason, why)) when the attempt gave up."""
        name = sp.service
        while True:
            ep = attempt.pick()
            if ep is None:
                return None, ("no_endpoint", f"service {name}: no endpoint")
            try:
                upstream, to_app = await self._open(pod, sp, dst, ep, trace, attempt.timeout)
            except (OSError, asyncio.TimeoutError, StreamRejected, tc.PreambleError, KeyError) as e:
                self.stats["connect_failures"] += 1
                delay = attempt.failed(failure_reason(e))
                if attempt.ejected:
                    self.stats["outlier_ejections"] += 1
                    log.info("service %s: endpoint %s:%d ejected", name, ep.ip, ep.port)
                why = f"service {name} via {ep.pod or ep.ip}:{ep.port}: {e or type(e).__name__}"
                if delay is None:
                    return None, ("connect_failed", f"{why} (gave up: {attempt.retry.gave_up})")
                log.info("%s; retrying in %.3fs", why, delay)
                self.stats["connect_retries"] += 1
                await asyncio.sleep(delay)
                continue
            attempt.connected()
            return upstream, to_app

    async def _open(self, pod, sp, dst, ep, trace, timeout):
        if ep.node is None:  # an address outside the mesh's pods: straight from the node
            return await dial((ep.ip, ep.port), timeout=timeout), b""
        if ep.node == self.node:
            return await self._connect_local(ep.pod, ep.ip, ep.port, timeout), b""
        peer = self.doc["nodes"][ep.node]
        msg = tc.Open(version=tc.VERSION, source_pod=pod.name,
                      source_identity=f"glasswing://{self.cluster}/pod/{pod.name}",
                      service=sp.service, port=sp.port,
                      original_dst=tc.Address(*dst), target=tc.Address(ep.ip, ep.port),
                      trace_id=trace, source_node=self.node)
        return await open_tunnel(peer["ip"], msg, timeout=timeout)

    async def _connect_local(self, pod_name, ip, port, timeout=None):
        pod = self.pods.get(pod_name)
        if pod is None:
            # refused: nothing reached an app, so another endpoint may be tried
            raise ConnectionRefusedError(f"pod {pod_name} is not attached on node {self.node}")
        return await connect_in_pod(pod.ns_fd, self.home_fd, ip, port, timeout=timeout)

    async def _tunnel_stream(self, sock):
        loop = asyncio.get_running_loop()
        self.stats["tunnel_in"] += 1
        reader = tc.PreambleReader("open")
        try:
            ev = await read_preamble(sock, reader)
        except tc.PreambleError as e:
            return await self._reject(sock, e.reason, str(e), "")
        except asyncio.TimeoutError:
            return await self._reject(sock, "malformed", f"no complete StreamOpen within {PREAMBLE_TIMEOUT}s", "")
        except OSError:
            sock.close()
            return
        sp = self.catalog.by_name.get((ev.service, ev.port))
        if sp is None:
            return await self._reject(sock, "no_such_service", f"no service {ev.service} port {ev.port}", ev.trace_id)
        local = [e for e in sp.endpoints
                 if e.node == self.node and e.ip == ev.target.ip and e.port == ev.target.port]
        if not local:
            return await self._reject(sock, "no_endpoint",
                                      f"{ev.target.ip}:{ev.target.port} is no endpoint of {ev.service} here", ev.trace_id)
        try:
            upstream = await self._connect_local(local[0].pod, ev.target.ip, ev.target.port,
                                                 self.policies.settings(ev.service).connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            return await self._reject(sock, "refused_by_app", str(e), ev.trace_id)
        try:
            await loop.sock_sendall(sock, tc.encode_accept(tc.Accept(version=tc.VERSION, trace_id=ev.trace_id)))
        except OSError:
            upstream.close()
            sock.close()
            return
        self._relay(sock, upstream, (ev.service, local[0], ev.trace_id, ev.source_pod), to_b=reader.leftover)

    async def _reject(self, sock, reason, detail, trace):
        self.stats["rejected"] += 1
        log.info("tunnel stream rejected: %s: %s", reason, detail)
        try:
            await asyncio.get_running_loop().sock_sendall(
                sock, tc.encode_reject(tc.Reject(reason=reason, detail=detail[:200], trace_id=trace)))
        except OSError:
            pass
        sock.close()

    def _sync_checkers(self, checks: dict) -> None:
        """One checker per registered endpoint whose service asks for checks."""
        for ekey in [k for k, (_c, check) in self.checkers.items() if checks.get(k, (None,))[0] != check]:
            self.checkers.pop(ekey)[0].stop()
        for ekey, (check, pod, ip, port) in checks.items():
            if ekey not in self.checkers:
                connect = (lambda p=pod, i=ip, n=port: self._connect_local(p, i, n))
                checker = Checker(connect, check, f"{ip}:{port}", lambda _status: self._publish_soon())
                self.checkers[ekey] = (checker, check)

    def _publish_soon(self):
        asyncio.get_running_loop().call_soon(self._health_changed)

    def _health_changed(self):
        self._publish()
        self._set_catalog(Catalog(self.doc))
        ids = {n: p.cgroup_id for n, p in self.pods.items()}
        self.maps.apply(desired(self.catalog, self.doc, self.node, ids, self.svc_ids))

    # ------------------------------------------------------------ dns

    def _dns_lookup(self, pod: str, name: str):
        ps = self.pods.get(pod)
        settings = self.doc["config"]["meshsettings"].get("-/mesh")
        suffix = settings.spec.dns_suffix if settings else None
        return dns_names.classify(name, ps.namespace if ps else "default", suffix, self.catalog.dns_names)

    def _upstream_socket(self):
        """For DNS forwarded upstream: made in the node's namespace, marked."""
        return marked_socket(kind=socket.SOCK_DGRAM)

    # ------------------------------------------------------------ admin

    async def _admin(self, req):
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "sync":
            self.reconcile(self.store.read())
            return self.status()
        if cmd == "shutdown":
            self.stopping.set()
            return {"ok": True}
        if cmd == "relay":  # new connections only; the bench switches paths this way
            try:
                self.relay_mode = relay_modes.check(req.get("mode"))
            except ValueError as e:
                return {"ok": False, "error": str(e)}
            return self.status()
        return {"ok": False, "error": f"unknown admin command {cmd!r}"}

    def published_keys(self) -> list:
        mine = f"{registry.PREFIX}endpoints/{self.node}/"
        return [k for k in self.doc["endpoints"] if k.startswith(mine)]

    def status(self) -> dict:
        from dataplane.relay.engine import IMPL as ENGINE
        from dataplane.relay.pump import IMPL
        from dataplane.relay.pipes import POOL
        return {"ok": True, "node": self.node, "pid": os.getpid(), "revision": self.doc["revision"],
                "store": "unavailable" if self.store_lost is not None else "ok",
                "endpoints_published": len(self.published_keys()), "dns": self.resolver.counters,
                "pods": sorted(self.pods), "services": len(self.doc["services"]),
                "connections": len(self.relays), "relay": self.relay_mode, "pump": IMPL,
                "engine": ENGINE, "kernel_relay": bool(self.engine and self.engine.kernel_on),
                "connections_in_kernel": self.engine.in_kernel() if self.engine else 0,
                "pipes": {"lent": POOL.lent, "idle": len(POOL.idle)}, "stats": self.stats,
                "http": {**self.http_metrics,
                         "pool": dict(self.http_pool.stats, idle=self.http_pool.idle())
                         if self.http_pool else {}},
                "map_updates": self.maps.updates if self.maps else 0, "errors": self.errors}


# HTTP sessions: client-side deadlines and buffers (http_proxy.HttpSettings' defaults: a head
# within 10 s, keep-alive clients idle up to 300 s, retried request bodies up to 64 KiB).
HTTP_SETTINGS = HttpSettings()


class MeshUpstreams:
    """http_proxy's Upstreams for one client connection of a pod: endpoints from the current
    catalog (so a store change applies to the next request), picked by the service port's
    policy state (the balancer and outlier detector L4 uses too), reached like L4 connections
    (in-pod connect for local endpoints, the tunnel for remote ones).

    A key is (source pod, Endpoint): the shared pool never hands a connection opened for one
    pod's identity to another. Outlier detection at L7 counts connect failures, resets,
    timeouts (so a slow endpoint is ejected through per-try timeouts), malformed responses and
    5xx answers; any other answer is a success."""

    def __init__(self, fwd, pod, dst, hash_key):
        self.fwd, self.pod, self.dst, self.hash_key = fwd, pod, dst, hash_key
        self.picked = {}  # key -> [balancer that counted the pick, ...], released by report()
        self.last = None

    def pick(self, service, port, subset, exclude):
        fwd = self.fwd
        sp = fwd.catalog.by_name.get((service, port))
        eps = sp.endpoints if sp is not None else ()
        if subset:
            eps = [e for e in eps if subset_matches(e.labels, subset)]
        if not eps:
            raise NoEndpoint(f"{service}:{port}")
        pp = fwd.policies.port(service, port)
        tried = {k[1] for k in exclude}
        cands = [e for e in eps if e not in tried] or list(eps)
        if pp.outlier is not None or pp.zone.local_zone:
            cands = pp.zone.candidates(cands) or cands
        balancer = pp.balancer
        ep = balancer.pick(cands, key=self.hash_key if pp.settings.load_balancer == "ring_hash" else None)
        if ep is None:
            raise NoEndpoint(f"{service}:{port}")
        key = self.last = (self.pod.name, ep)
        self.picked.setdefault(key, []).append(balancer)
        return key

    async def connect(self, key):
        fwd = self.fwd
        _pod, ep = key
        sp = fwd.catalog.service_port(*self.dst)
        if sp is None or self.pod.name not in fwd.pods:
            raise ConnectFailed("the service or the client's pod is gone")
        try:
            return await fwd._open(self.pod, sp, self.dst, ep, new_trace_id(fwd.policies.rng),
                                   fwd.policies.settings(sp.service).connect_timeout)
        except (StreamRejected, tc.PreambleError, KeyError, asyncio.TimeoutError) as e:
            fwd.stats["connect_failures"] += 1
            raise ConnectFailed(f"{ep.pod or ep.ip}:{ep.port}: {e or type(e).__name__}") from None
        except OSError:
            fwd.stats["connect_failures"] += 1
            raise

    def report(self, key, outcome):
        """How a try on key ended (http_exchange.Tries._report)."""
        held = self.picked.get(key)
        if held:
            held.pop().release(key[1])
            if not held:
                del self.picked[key]
        if outcome is None:
            return
        ep = key[1]
        sp = self.fwd.catalog.service_port(*self.dst)
        if sp is None:
            return
        pp = self.fwd.policies.port(sp.service, sp.port)
        if pp.outlier is None:
            return
        failed = outcome in (CONNECT_FAILURE, RESET, TIMEOUT, BAD_RESPONSE) or \
            (isinstance(outcome, int) and outcome >= 500)
        if not failed:
            pp.outlier.success(ep.addr)
        elif pp.outlier.failure(ep.addr, total=len(pp.endpoints or sp.endpoints)):
            self.fwd.stats["outlier_ejections"] += 1
            log.info("service %s: endpoint %s:%d ejected (HTTP %s)", sp.service, ep.ip, ep.port, outcome)


# Why the forwarder resets an app's new connection; each is counted in
# stats as refused_REASON.
REFUSALS = ("no_service", "rate_limit", "max_connections", "max_pending", "no_endpoint", "connect_failed")


class RelaySet(set):
    """Forwarder.relays: the open relays. A relay's on_close is our discard,
    so discard tells the forwarder which connection ended."""

    def __init__(self, on_discard):
        super().__init__()
        self._on_discard = on_discard

    def discard(self, r) -> None:
        if r in self:
            super().discard(r)
            self._on_discard(r)


def failure_reason(exc: BaseException) -> str:
    """connect_retry's reason for a failed upstream open. A peer forwarder
    that could not reach the app, or has no such endpoint, is a refused
    connect: nothing reached the app, so another endpoint may be tried."""
    if isinstance(exc, StreamRejected):
        return "refused" if exc.reason in ("refused_by_app", "no_endpoint") else "rejected"
    if isinstance(exc, KeyError):  # the endpoint's node left the store
        return "unreachable"
    return classify(exc)


def source_key(pod: PodState, conn) -> str:
    """The ring hash key at L4: the client's address. Apps reach the outbound
    listener over loopback, so that is the pod's own address."""
    try:
        ip = conn.getpeername()[0]
    except OSError:
        ip = ""
    if not ip or ip.startswith("127."):
        return pod.rec.get("ip") or pod.name
    return ip


def run(store_url: str, node: str, run_root: str, relay: str = relay_modes.BUILT_IN_DEFAULT) -> int:
    """Foreground entry: enter the node's namespace, serve until told to stop."""
    # Every relayed connection holds two sockets and two pipes (six fds): the
    # default soft limit of 1024 would cap a node at ~170 connections.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            want = max(hard, min(int(f.read()), 1 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise the hard limit
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    kv = open_kv(store_url)
    store = Registry(kv, store_url)
    doc = store.read()
    rec = doc["nodes"].get(node)
    if rec and rec.get("netns"):
        if hasattr(kv, "netns_fd"):
            kv.netns_fd = netns.self_fd()  # the store is reached from where this started
        netns.setns(netns.open_fd(rec["netns"]))  # before any thread exists
    home_fd = netns.self_fd()

    async def main():
        fwd = Forwarder(store, node, run_root, home_fd, relay=relay)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, fwd.stopping.set)
        await fwd.start()
        try:
            await fwd.stopping.wait()
        finally:
            await fwd.stop()
        return 0

    return asyncio.run(main())


def cleanup_stale(doc: dict, node: str, run_root: str) -> list:
    """Undo what a killed forwarder of this node left: attachments, pins, cgroup, pidfile."""
    done = []
    if doc["cluster"] is None:
        return done
    paths = node_paths(run_root, doc["cluster"], node)
    cg = topology.forwarder_cgroup(doc["cluster"], node)
    for pod in doc["pods"].values():
        if pod["node"] == node and os.path.isdir(pod["cgroup"]) and detach_stale(pod["cgroup"]):
            done.append(f"programs on {pod['cgroup']}")
    if os.path.isdir(cg):
        if detach_stale(cg):
            done.append(f"programs on {cg}")
        cgroups.remove(os.path.dirname(cg))
        done.append(f"cgroup {cg}")
    if os.path.isdir(paths["pins"]):
        bpf_maps.unpin_all(paths["pins"])
        done.append(f"pins {paths['pins']}")
    for p in (paths["pidfile"], paths["admin"]):
        if os.path.exists(p):
            os.unlink(p)
    return done


def wait_gone(pid: int, timeout: float) -> bool:
    """True once pid has exited. A forwarder started by this process (tests,
    the demo) stays a zombie until reaped: reap it, do not wait on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass  # not our child: someone else reaps it
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.02)
    return False
