"""Outbound: an app's connection to a service, from the pod's listener on 15001 to a relay.

An outbound connection is served by the declared protocol of its service port
(catalog.ServicePort.protocol, from the ServicePort's `protocol`):
  "tcp"   opaque L4: admitted, balanced and retried per connection, relayed
          raw at once (the fast path: nothing waits for the client's bytes).
  "http"  HTTP/1.1 (dataplane/node/mesh_http.py): routes, splits, retries,
          timeouts, rate limit, faults and the breaker apply per request.
  ""      undeclared: http.proxy.detect() reads the client's first bytes for
          at most http.sniff.SNIFF_DEADLINE (100 ms). HTTP/1.1 goes to a
          session; anything else is relayed opaque with the sniffed bytes
          passed on first. A client-first non-HTTP protocol is decided on its
          first bytes; a server-first one (MySQL, SMTP, a greeting echo server)
          has a client that sends nothing, so it waits out the deadline, once:
          when its upstream then speaks first, the service port is marked
          server-first (node.server_first) and its next connections skip the
          sniff and are relayed opaque at once (counted as sniff_skipped; the
          marks are in status "server_first"). A skipping connection is relayed
          once either side has sent bytes; a client that spoke first drops the
          mark. A mark is probed again after server_first.TTL and pruned with
          its service port.

At L4, in order: the original destination (destination(conn), SO_ORIGINAL_DST in the
forwarder), the service port, admission (rate limit, breaker), then an Attempt of the
policy state picks endpoints and says whether and when to retry a failed connect; the
dialer opens each try, and the first success goes to the relay sink with the bytes read
so far. A refused connection is reset and counted as refused_REASON (counters.REFUSALS).
The Attempt's hold (breaker slot, least-request count) is given back when the relay ends
(relay_gone) or, as a backstop, when the sweep finds its socket closed (release_ended).
"""
import asyncio
import logging

from dataplane.host.sockets import original_dst
from dataplane.http.proxy import HTTP, detect
from dataplane.http.trace_context import new_trace_id
from dataplane.node.counters import refuse, reset
from dataplane.node.server_first import CLIENT, SERVER, ServerFirstPorts, first_speaker
from dataplane.policy.connect_retry import classify
from dataplane.tunnel import codec as tc
from dataplane.tunnel.streams import StreamRejected

log = logging.getLogger("glasswing.forwarder")


class Outbound:
    def __init__(self, *, catalog, policies, dialer, relay, http, counters: dict,
                 destination=original_dst, server_first=None):
        """catalog(): the current Catalog; policies: the Policies state; dialer: open(pod, sp,
        dst, ep, trace, timeout) -> (socket, bytes for the app) (node.dialer.MeshDialer);
        relay(a, b, info, to_b, to_a): the relay sink; http(pod, conn, sp, dst, prefix): serves
        an HTTP connection (node.mesh_http.MeshHttp.serve); destination(conn): the (ip, port)
        the app dialled, or None; server_first: the ServerFirstPorts marks (one of its own by
        default)."""
        self._catalog, self._policies, self._dialer = catalog, policies, dialer
        self._relay, self._http, self._counters = relay, http, counters
        self._destination = destination
        self._server_first = ServerFirstPorts() if server_first is None else server_first
        self._pruned_for = None  # the catalog the marks were last pruned against
        self.attempts = {}  # trace -> (app socket, policy.Attempt) of open outbound connections

    async def serve(self, pod, conn) -> None:
        """Serve one accepted connection of pod (an object with name and rec) to its end."""
        dst = self._destination(conn)
        if dst is None:
            return refuse(self._counters, conn, "no_service", f"pod {pod.name}: no original destination")
        sp = self._catalog().service_port(*dst)
        if sp is None:
            return refuse(self._counters, conn, "no_service",
                          f"pod {pod.name}: {dst[0]}:{dst[1]} is no service port")
        if sp.protocol == "tcp":
            return await self._opaque(pod, conn, sp, dst)
        if sp.protocol == "http":
            return await self._http(pod, conn, sp, dst, b"")
        return await self._undeclared(pod, conn, sp, dst)

    async def _undeclared(self, pod, conn, sp, dst):
        """A port with no declared protocol: relayed opaque at once when it is marked
        server-first, else sniffed (the sniffed connection's verdict goes to the marks)."""
        key = (sp.service, sp.port)
        marks = self._marks()
        if marks.skip(key):
            self._counters["sniff_skipped"] += 1
            return await self._opaque(pod, conn, sp, dst, watch=lambda c, up, to_app: self._check(key, c, up, to_app))
        try:
            kind, prefix = await detect(conn)
        except BaseException:
            marks.seen(key, None)
            raise
        self._counters[f"sniffed_{kind}"] += 1
        if kind == HTTP or prefix:
            marks.seen(key, CLIENT)
        sp = self._catalog().service_port(*dst)  # the store may have changed meanwhile
        if sp is None:
            marks.seen(key, None)
            return refuse(self._counters, conn, "no_service",
                          f"pod {pod.name}: {dst[0]}:{dst[1]} is no service port")
        if kind == HTTP:
            return await self._http(pod, conn, sp, dst, prefix)
        if prefix:
            return await self._opaque(pod, conn, sp, dst, prefix)
        settled = []

        async def learn(c, upstream, to_app):
            first = await first_speaker(c, upstream, to_app)
            settled.append(first)
            marks.seen(key, first)
            if first == SERVER:
                self._counters["server_first_learned"] += 1
                log.info("service %s port %d: server-first, new connections skip the sniff", *key)
        try:
            await self._opaque(pod, conn, sp, dst, watch=learn)
        finally:
            if not settled:
                marks.seen(key, None)

    async def _check(self, key, conn, upstream, to_app):
        """A connection that skipped the sniff, its upstream connected: the relay starts once
        either side has sent bytes (at most server_first.GREETING_WAIT; a server-first client
        waits for the greeting anyway). A client that spoke first refutes the mark, so its
        next connections are sniffed again; this one is relayed opaque all the same."""
        if await first_speaker(conn, upstream, to_app) == CLIENT:
            self._server_first.seen(key, CLIENT)
            self._counters["server_first_refuted"] += 1
            log.info("service %s port %d: a client spoke first, sniffing again", *key)

    def _marks(self):
        """The server-first marks, first pruned of service ports that left the catalog or
        declare a protocol now (once per catalog: it is rebuilt on every store change)."""
        catalog = self._catalog()
        if catalog is not self._pruned_for:
            self._pruned_for = catalog
            self._server_first.prune(lambda k: getattr(catalog.by_name.get(k), "protocol", None) == "")
        return self._server_first

    def status(self) -> dict:
        """Status part: the service ports learned as server-first."""
        return {"server_first": self._marks().status()}

    async def _opaque(self, pod, conn, sp, dst, to_upstream=b"", watch=None):
        """An L4 connection: admitted, connected (with retries) and relayed raw; to_upstream
        holds the client bytes read while sniffing, sent upstream first. watch(conn, upstream,
        bytes for the app): awaited once connected, before the relay starts (server-first
        learning; it only peeks)."""
        name = sp.service
        policies = self._policies
        port = policies.port(name, sp.port)
        refused = port.service.admit()
        if refused:
            return refuse(self._counters, conn, refused, f"service {name}: {refused}")
        key = source_key(pod, conn) if port.settings.load_balancer == "ring_hash" else None
        attempt = policies.attempt(port, sp.endpoints, key)
        trace = new_trace_id(policies.rng)
        try:
            upstream, to_app = await self._connect_upstream(pod, sp, dst, attempt, trace)
        except BaseException:
            attempt.close()
            conn.close()
            raise
        if upstream is None:
            attempt.close()
            return refuse(self._counters, conn, to_app[0], to_app[1])
        if watch is not None:
            try:
                await watch(conn, upstream, to_app)
            except BaseException:
                attempt.close()
                upstream.close()
                conn.close()
                raise
        self.attempts[trace] = (conn, attempt)
        try:
            self._relay(conn, upstream, (name, attempt.endpoint, trace, pod.name),
                        to_b=to_upstream, to_a=to_app)
        except Exception as e:  # noqa: BLE001 - this connection fails, the forwarder goes on
            self.attempts.pop(trace, None)
            attempt.close()
            upstream.close()
            reset(self._counters, conn, f"service {name}: relay failed to start: {e}")

    async def _connect_upstream(self, pod, sp, dst, attempt, trace):
        """(upstream socket, bytes for the app) once a connect succeeded, or
        (None, (refusal reason, why)) when the attempt gave up."""
        name = sp.service
        counters = self._counters
        while True:
            ep = attempt.pick()
            if ep is None:
                return None, ("no_endpoint", f"service {name}: no endpoint")
            try:
                upstream, to_app = await self._dialer.open(pod.name, sp, dst, ep, trace, attempt.timeout)
            except (OSError, asyncio.TimeoutError, StreamRejected, tc.PreambleError, KeyError) as e:
                counters["connect_failures"] += 1
                delay = attempt.failed(failure_reason(e))
                if attempt.ejected:
                    counters["outlier_ejections"] += 1
                    log.info("service %s: endpoint %s:%d ejected", name, ep.ip, ep.port)
                why = f"service {name} via {ep.pod or ep.ip}:{ep.port}: {e or type(e).__name__}"
                if delay is None:
                    return None, ("connect_failed", f"{why} (gave up: {attempt.retry.gave_up})")
                log.info("%s; retrying in %.3fs", why, delay)
                counters["connect_retries"] += 1
                await asyncio.sleep(delay)
                continue
            attempt.connected()
            return upstream, to_app

    def relay_gone(self, r) -> None:
        """A relay ended (the relay sink's on_gone): an outbound connection gives back its
        policy hold (breaker slot, least-request count)."""
        if not r.info:
            return
        held = self.attempts.get(r.info[2])
        if held is not None and held[0] is r.a:
            del self.attempts[r.info[2]]
            held[1].close()

    def release_ended(self, relayed: set) -> None:
        """Give back the hold of every connection whose app socket is closed and whose trace
        is not among the open relays' (the sweep's backstop for relay_gone)."""
        for trace in [t for t, (conn, _a) in self.attempts.items()
                      if conn.fileno() < 0 and t not in relayed]:
            self.attempts.pop(trace)[1].close()


def failure_reason(exc: BaseException) -> str:
    """connect_retry's reason for a failed upstream open. A peer forwarder
    that could not reach the app, or has no such endpoint, is a refused
    connect: nothing reached the app, so another endpoint may be tried."""
    if isinstance(exc, StreamRejected):
        return "refused" if exc.reason in ("refused_by_app", "no_endpoint") else "rejected"
    if isinstance(exc, KeyError):  # the endpoint's node left the store
        return "unreachable"
    return classify(exc)


def source_key(pod, conn) -> str:
    """The ring hash key at L4: the client's address. Apps reach the outbound
    listener over loopback, so that is the pod's own address."""
    try:
        ip = conn.getpeername()[0]
    except OSError:
        ip = ""
    if not ip or ip.startswith("127."):
        return pod.rec.get("ip") or pod.name
    return ip
