"""Outbound HTTP: what the forwarder wires into an http.proxy.HttpSession.

MeshHttp serves one client connection of a pod on an HTTP port (declared, or sniffed by
outbound): the session reaches endpoints through MeshUpstreams (the same balancer, outlier
detector and dialer as L4) and shares one UpstreamPool of idle upstream connections, made
with the first session. Its policy (http.proxy.ServicePolicy) is asked per request through
http_policy(service, port), which the reconciler rebuilds from the Route and TrafficPolicy
objects on every store change, so `glasswing apply` changes routing without a restart. A 101
(WebSocket) or a 2xx to CONNECT hands both sockets to the relay sink.
"""
import asyncio
import logging

from dataplane.http.exchange import BAD_RESPONSE, TIMEOUT
from dataplane.http.pool import UpstreamPool
from dataplane.http.proxy import ConnectFailed, HttpSession, HttpSettings, NoEndpoint, new_metrics
from dataplane.http.route import CONNECT_FAILURE, RESET, subset_matches
from dataplane.http.trace_context import new_trace_id
from dataplane.node.counters import reset
from dataplane.node.outbound import source_key
from dataplane.tunnel import codec as tc
from dataplane.tunnel.streams import StreamRejected

# HTTP sessions: client-side deadlines and buffers (http.proxy.HttpSettings' defaults: a head
# within 10 s, keep-alive clients idle up to 300 s, retried request bodies up to 64 KiB).
HTTP_SETTINGS = HttpSettings()
log = logging.getLogger("glasswing.forwarder")


class MeshHttp:
    def __init__(self, *, catalog, policies, dialer, relay, http_policy, attached, counters: dict):
        """catalog(): the current Catalog; policies: the Policies state; dialer: as outbound's;
        relay(a, b, info, to_b, to_a): the relay sink; http_policy(service, port): the current
        http.proxy.ServicePolicy; attached(pod name): whether that pod is still served here."""
        self._catalog, self._policies, self._dialer = catalog, policies, dialer
        self._relay, self._http_policy, self._attached = relay, http_policy, attached
        self._counters = counters
        self.pool = None  # idle upstream HTTP connections, made with the first session
        self.metrics = new_metrics()

    async def serve(self, pod, conn, sp, dst, prefix: bytes) -> None:
        """Serve one client connection as HTTP/1.1 until it closes or switches protocols."""
        self._counters["http_sessions"] += 1
        if self.pool is None:
            self.pool = UpstreamPool(asyncio.get_running_loop())
        name, port = sp.service, sp.port
        upstreams = self.upstreams(pod, dst, source_key(pod, conn))

        def on_switch(client, upstream, to_upstream, to_client):
            """After a 101 (WebSocket) or a 2xx to CONNECT: raw bytes both ways from now on,
            for as long as the app keeps the connection (idle timeout only if configured)."""
            ep = upstreams.last[1] if upstreams.last else None
            try:
                self._relay(client, upstream, (name, ep, new_trace_id(self._policies.rng), pod.name),
                            to_b=to_upstream, to_a=to_client)
            except Exception as e:  # noqa: BLE001 - this connection fails, the forwarder goes on
                upstream.close()
                reset(self._counters, client, f"service {name}: relay after upgrade failed to start: {e}")

        session = HttpSession(conn, name, port, upstreams, prefix=prefix,
                              policy=lambda: self._http_policy(name, port), pool=self.pool,
                              settings=HTTP_SETTINGS, on_switch=on_switch, metrics=self.metrics,
                              rng=self._policies.rng)
        await session.run()

    def upstreams(self, pod, dst, hash_key) -> "MeshUpstreams":
        return MeshUpstreams(catalog=self._catalog, policies=self._policies, dialer=self._dialer,
                             attached=self._attached, counters=self._counters,
                             pod=pod, dst=dst, hash_key=hash_key)

    def close(self) -> None:
        if self.pool:
            self.pool.close()

    def status(self) -> dict:
        return {**self.metrics,
                "pool": dict(self.pool.stats, idle=self.pool.idle()) if self.pool else {}}


class MeshUpstreams:
    """http.proxy's Upstreams for one client connection of a pod: endpoints from the current
    catalog (so a store change applies to the next request), picked by the service port's
    policy state (the balancer and outlier detector L4 uses too), reached like L4 connections
    (in-pod connect for local endpoints, the tunnel for remote ones).

    A key is (source pod, Endpoint): the shared pool never hands a connection opened for one
    pod's identity to another. Outlier detection at L7 counts connect failures, resets,
    timeouts (so a slow endpoint is ejected through per-try timeouts), malformed responses and
    5xx answers; any other answer is a success."""

    def __init__(self, *, catalog, policies, dialer, attached, counters: dict, pod, dst, hash_key):
        self._catalog, self._policies, self._dialer = catalog, policies, dialer
        self._attached, self._counters = attached, counters
        self.pod, self.dst, self.hash_key = pod, dst, hash_key
        self.picked = {}  # key -> [balancer that counted the pick, ...], released by report()
        self.last = None

    def pick(self, service, port, subset, exclude):
        sp = self._catalog().by_name.get((service, port))
        eps = sp.endpoints if sp is not None else ()
        if subset:
            eps = [e for e in eps if subset_matches(e.labels, subset)]
        if not eps:
            raise NoEndpoint(f"{service}:{port}")
        pp = self._policies.port(service, port)
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
        _pod, ep = key
        sp = self._catalog().service_port(*self.dst)
        if sp is None or not self._attached(self.pod.name):
            raise ConnectFailed("the service or the client's pod is gone")
        policies = self._policies
        try:
            return await self._dialer.open(self.pod.name, sp, self.dst, ep, new_trace_id(policies.rng),
                                           policies.settings(sp.service).connect_timeout)
        except (StreamRejected, tc.PreambleError, KeyError, asyncio.TimeoutError) as e:
            self._counters["connect_failures"] += 1
            raise ConnectFailed(f"{ep.pod or ep.ip}:{ep.port}: {e or type(e).__name__}") from None
        except OSError:
            self._counters["connect_failures"] += 1
            raise

    def report(self, key, outcome):
        """How a try on key ended (http.exchange.Tries._report)."""
        held = self.picked.get(key)
        if held:
            held.pop().release(key[1])
            if not held:
                del self.picked[key]
        if outcome is None:
            return
        ep = key[1]
        sp = self._catalog().service_port(*self.dst)
        if sp is None:
            return
        pp = self._policies.port(sp.service, sp.port)
        if pp.outlier is None:
            return
        failed = outcome in (CONNECT_FAILURE, RESET, TIMEOUT, BAD_RESPONSE) or \
            (isinstance(outcome, int) and outcome >= 500)
        if not failed:
            pp.outlier.success(ep.addr)
        elif pp.outlier.failure(ep.addr, total=len(pp.endpoints or sp.endpoints)):
            self._counters["outlier_ejections"] += 1
            log.info("service %s: endpoint %s:%d ejected (HTTP %s)", sp.service, ep.ip, ep.port, outcome)
