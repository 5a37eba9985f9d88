"""The HTTP/1.1 proxy session: one client connection on an HTTP port, served with keep-alive.

The forwarder decides per connection (issue 4, part 3): a port declared "http" goes straight to
an HttpSession; any other port is sniffed first with detect(), which reads the client's first
bytes for at most SNIFF_DEADLINE and answers "http" or "opaque". A server-first protocol
(MySQL, SMTP) sends nothing, the deadline passes and the connection is opaque: the
forwarder relays it raw (relay.Relay) with the bytes detect() read passed on as to_b.

    kind, prefix = await detect(conn, loop)
    if kind == OPAQUE:   relay raw, to_b=prefix
    else:                await HttpSession(conn, service, port, upstreams, prefix=prefix,
                                           policy=..., pool=..., on_switch=..., metrics=...).run()

What the forwarder provides (nothing here knows the catalog, the kernel or the tunnel):

    upstreams   an Upstreams: pick(service, port, subset, exclude) -> key, synchronously (the
                load balancer's choice, raising NoEndpoint), then async connect(key) -> socket
                or (socket, leftover bytes) (raising ConnectFailed, OSError or TimeoutError).
                Picking and connecting are two calls so that the pool can hand out an idle
                connection to the endpoint the balancer chose.
    policy      a ServicePolicy, or a callable returning the current one (asked per request):
                the service's RouteTable (None: DEFAULT_RULE), local rate limit, fault
                injection, retry budget (one per service, shared by its sessions), methods
                marked safe to retry.
    pool        the forwarder-wide pool.UpstreamPool of idle upstream connections.
    on_switch   on_switch(client_sock, upstream_sock, to_upstream, to_client) after a 101 (or a
                2xx to CONNECT): the session has sent the 101 to the client and hands both
                sockets over (the forwarder starts a raw Relay with to_b/to_a); the session ends
                without closing them. None: Upgrade headers are not forwarded, so upstreams
                never switch, and CONNECT is answered 501.
    metrics     a dict of counters, shared or per session (listed below; new_metrics()).

One request, in order: parse (RequestParser), trace headers (traceparent, x-request-id),
route (no matching rule: 404), rate limit (429), fault injection (delay, abort; the matched
rule's fault, else the service's), circuit breaker (503 circuit_open), then tries:
pick an endpoint, reuse or open a connection, send the head and stream the body, read the
response head, and either retry or stream the response to the client. This module admits
requests; the client connection is client.ClientConnection's; the tries, retries, timeouts and
streaming are tries.Tries' (its retry loop) and transfer.Transfer's (the bytes), which reach the
client only through the ClientSide interface in tries.py.

Client-side deadlines: the first request's head must be complete within head_timeout of the
session's start, later ones within head_timeout of their first byte; between requests a client
may stay idle for idle_timeout, and a client that stalls its request body or stops reading its
response for idle_timeout is closed.

Metrics (counters in the metrics dict, created on first use): requests, responses_1xx..5xx
(forwarded and local), local_<reason> per x-glasswing-reason of local replies (local_http_<status>
for bad requests), retries, stale_retries, retry_budget_exhausted, upstream_<outcome> per failed
try (connect_failure, reset, timeout, bad_response, status_<code> for retried answers),
upstream_connects, pool_reuses, switched, client_errors, client_aborted, client_idle_closed,
fault_delays, upstream_timeout_streaming, upstream_reset_streaming, upstream_bad_body.

Errors: a bad request gets error_reply (400, 414, 431, 501, 505) and the connection is closed
after a lingering drain, so the reply is not lost to a reset; a head that does not complete in
time gets 408. Upstream failures give 503 (no healthy endpoint, connect failure), 502 (reset,
malformed response) or 504 (timeout) while nothing was sent, and a reset client connection
otherwise.
"""
import asyncio
import dataclasses
import logging
import random
import socket

from dataplane.http.client import ClientConnection
from dataplane.http.exchange import ClientFailed, ConnectFailed, Exchange, NoEndpoint
from dataplane.http.h1 import (IDEMPOTENT_METHODS, MAX_HEAD, MAX_HEADERS, MAX_REQUEST_LINE,
                               HttpError, RequestParser, strip_hop_by_hop, write_head)
from dataplane.http.pool import UpstreamPool
from dataplane.http.route import (FAULT_ABORT, NO_ROUTE, RATE_LIMITED, CompiledRule,
                                  apply_set_headers, choose_subset, error_reply, local_reply,
                                  request_path)
from dataplane.http.sniff import HTTP, MAX_SNIFF, NEED_MORE, OPAQUE, SNIFF_DEADLINE, sniff
from dataplane.http.sockio import recv
from dataplane.http.trace_context import ensure_trace
from dataplane.http.tries import Tries

__all__ = ["detect", "HTTP", "OPAQUE", "HttpSettings", "ServicePolicy", "Upstreams",
           "NoEndpoint", "ConnectFailed", "HttpSession", "DEFAULT_RULE", "new_metrics"]

log = logging.getLogger("glasswing.http")

# x-glasswing-reason values beyond route's (and exchange's)
HEADER_TIMEOUT = "request_header_timeout"
OVERFLOW = "circuit_open"  # the service's circuit breaker refused the request
NOT_SUPPORTED = "not_supported"


async def detect(sock: socket.socket, loop=None, deadline: float = SNIFF_DEADLINE):
    """("http" or "opaque", the bytes read) for a client's first bytes.

    Reads (plain recv: the bytes are returned, not left in the socket) until sniff.sniff
    decides, MAX_SNIFF bytes are in, the client closes its side, or deadline seconds pass; the
    last three mean "opaque". Never waits longer than deadline, so a server-first protocol only
    pays that once, at connect."""
    loop = loop or asyncio.get_running_loop()
    buf = b""
    try:
        async with asyncio.timeout(deadline):
            while True:
                verdict = sniff(buf)
                if verdict != NEED_MORE:
                    return verdict, buf
                if len(buf) >= MAX_SNIFF:
                    return OPAQUE, buf
                data = await recv(loop, sock, MAX_SNIFF - len(buf))
                if not data:
                    return OPAQUE, buf
                buf += data
    except TimeoutError:
        return OPAQUE, buf
    except OSError:
        return OPAQUE, buf  # the relay meets the same error and resets both sides


# --- what the forwarder provides -----------------------------------------------------------


class Upstreams:
    """The interface the forwarder implements (duck-typed; this class documents it)."""

    def pick(self, service: str, port: int, subset, exclude: set):
        """A hashable key naming one healthy endpoint of service:port whose labels carry subset
        (a dict; None or {}: any). Prefer endpoints not in exclude (tried already for this
        request); return one of them only when nothing else fits. Raise NoEndpoint."""
        raise NotImplementedError

    async def connect(self, key):
        """A connected non-blocking socket to the endpoint key, or (socket, bytes the upstream
        already sent, e.g. after a tunnel's StreamAccept). Raise ConnectFailed or OSError."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    head_timeout: float = 10.0  # a complete request head, from its first byte
    idle_timeout: float = 300.0  # a keep-alive client between requests; a client stalling a
    # request body or not reading its response for this long is closed
    linger: float = 2.0  # closing after an error: how long to drain what the client still sends
    replay_limit: int = 64 * 1024  # request bodies up to this are kept for retries
    recv_size: int = 64 * 1024
    max_request_line: int = MAX_REQUEST_LINE
    max_head: int = MAX_HEAD
    max_headers: int = MAX_HEADERS
    backoff_base: float = 0.025  # pause before retry n: uniform(0, min(cap, base * 2**n))
    backoff_cap: float = 0.25

    def parser_limits(self) -> dict:
        return {"max_line": self.max_request_line, "max_head": self.max_head,
                "max_headers": self.max_headers}


# A service without a Route: no timeouts, a connect failure is retried on another endpoint.
DEFAULT_RULE = CompiledRule(index=-1, rule=None, split=(), timeout_s=None, per_try_timeout_s=None,
                            retries=2, retry_on=frozenset({"connect-failure"}), set_headers=(),
                            ignored_headers=())


@dataclasses.dataclass
class ServicePolicy:
    routes: object = None  # route.RouteTable; None: every request takes DEFAULT_RULE
    rate_limit: object = None  # token_bucket.TokenBucket on requests; refused: 429
    fault: object = None  # route.FaultInjection
    retry_budget: object = None  # retry_budget.RetryBudget, one per service; None: unlimited
    safe_methods: frozenset = frozenset()  # methods retried as if idempotent, e.g. {b"POST"}
    breaker: object = None  # circuit_breaker.CircuitBreaker shared by the service: at L7 each
    # request in flight holds one slot, so max_connections caps concurrent requests (503 above it)


def new_metrics() -> dict:
    return {"requests": 0, "retries": 0, "upstream_connects": 0, "pool_reuses": 0,
            "stale_retries": 0, "switched": 0}


# --- the session ---------------------------------------------------------------------------


class HttpSession:
    """Serves one client connection until it closes, errs, idles out or switches protocols.
    The client connection is a client.ClientConnection; each admitted request goes to the
    session's tries.Tries, which reaches the client only through that connection."""

    def __init__(self, client: socket.socket, service: str, port: int, upstreams, *,
                 policy=None, pool: UpstreamPool = None, settings: HttpSettings = None,
                 prefix: bytes = b"", on_switch=None, metrics: dict = None, rng=None, loop=None):
        self.loop = loop or asyncio.get_running_loop()
        self.service, self.port = service, port
        self._policy = policy if callable(policy) else (lambda p=policy or ServicePolicy(): p)
        self._own_pool = pool is None
        self.pool = pool or UpstreamPool(self.loop)
        self.settings = settings or HttpSettings()
        self.on_switch = on_switch
        self.metrics = {} if metrics is None else metrics
        for key, zero in new_metrics().items():
            self.metrics.setdefault(key, zero)
        self.rng = rng or random.Random()
        parser = RequestParser(**self.settings.parser_limits())
        if prefix:
            parser.receive_data(prefix)
        self.client = ClientConnection(client, parser, self.settings, self.metrics, self.loop,
                                       on_switch)
        self.tries = Tries(self.client, upstreams, self.pool, self.settings, service, port,
                           rng=self.rng, loop=self.loop)

    @property
    def peak_buffered(self) -> int:
        """Most response bytes held at once (bounded by recv_size)."""
        return self.tries.peak_buffered

    # -- the connection

    async def run(self) -> None:
        client = self.client
        try:
            await self._serve()
        except asyncio.CancelledError:
            client.reset()
            raise
        except Exception:  # noqa: BLE001 - one broken session must not take others down
            log.exception("http session for %s:%s", self.service, self.port)
            client.reset()
        finally:
            client.close()
            if self._own_pool:
                self.pool.close()

    async def _serve(self):
        client = self.client
        first = True
        while True:
            try:
                request = await client.read_head(first)
            except HttpError as e:
                client.count("client_errors")
                client.count_response(e.status)
                client.count(f"local_http_{e.status}")
                await client.send_quietly(error_reply(e))
                return await client.linger_close()
            except TimeoutError:
                if client.parser.buffered:  # part of a head came, the rest did not
                    client.count_response(408)
                    client.count(f"local_{HEADER_TIMEOUT}")
                    await client.send_quietly(local_reply(
                        408, f"request head not complete within {self.settings.head_timeout:g}s",
                        HEADER_TIMEOUT, close=True))
                return await client.linger_close()
            except OSError:
                return
            if request is None:
                return
            first = False
            keep = await self._handle(request)
            if client.switched or client.closed:
                return
            if not keep:
                return await client.linger_close()

    # -- one request

    async def _handle(self, request) -> bool:
        """Admit one request and hand it to the tries; whether the client connection stays
        open."""
        client = self.client
        client.count("requests")
        policy = self._policy()
        ex = Exchange(request, DEFAULT_RULE)
        # Upgrade is forwarded only when someone can take the switched connection over, and
        # not with "Connection: close" (the parser then ends the connection instead of pausing).
        ex.upgrade = (self.on_switch is not None and request.keep_alive
                      and (request.method == b"CONNECT" or request.get(b"upgrade") is not None))
        trace = ensure_trace(request.headers, self.rng)
        ex.request_id = trace.request_id
        try:
            client.take_buffered_body(ex)
        except HttpError as e:
            return await client.failed(ex, ClientFailed(e))
        if request.method == b"CONNECT" and not ex.upgrade:
            return await client.answer(ex, 501, "CONNECT is not supported here", NOT_SUPPORTED)
        if policy.routes is not None:
            rule = policy.routes.match(request)
            if rule is None:
                path = request_path(request) or request.target.decode("latin-1")[:200]
                return await client.answer(
                    ex, 404, f"no route for {request.method.decode('latin-1')} {path} "
                    f"in service {self.service}", NO_ROUTE)
            ex.rule = rule
        if policy.rate_limit is not None and not policy.rate_limit.try_take():
            return await client.answer(ex, 429, f"rate limit of service {self.service} exceeded",
                                       RATE_LIMITED)
        injection = ex.rule.fault if ex.rule.fault is not None else policy.fault
        if injection is not None:
            fault = injection.decide(self.rng)
            if fault.delay_s:
                client.count("fault_delays")
                await asyncio.sleep(fault.delay_s)
            if fault.abort_status is not None:
                return await client.answer(ex, fault.abort_status, "fault injected", FAULT_ABORT)
        ex.subset = choose_subset(ex.rule, self.rng) if ex.rule.split else None
        ex.marked_safe = request.method in policy.safe_methods or ex.rule.retry_non_idempotent
        ex.may_replay = ex.marked_safe or request.method in IDEMPOTENT_METHODS
        ex.budget = policy.retry_budget
        headers = strip_hop_by_hop(trace.headers, keep_upgrade=ex.upgrade)
        headers = apply_set_headers(headers, ex.rule)
        if request.get(b"host") is None:
            headers += ((b"Host", self.service.encode("latin-1")),)
        ex.head = write_head(dataclasses.replace(request, headers=headers))
        breaker = policy.breaker
        if breaker is None:
            return await self.tries.forward(ex)
        refused = breaker.try_acquire()
        if refused is not None:
            return await client.answer(ex, 503, f"service {self.service} is at its limit of "
                                       f"{breaker.max_connections} requests in flight", OVERFLOW)
        breaker.connected()  # requests are not pending: the slot is held until the exchange ends
        try:
            return await self.tries.forward(ex)
        finally:
            breaker.release(connected=True)
