"""The HTTP/1.1 proxy session: one client connection on an HTTP port, served with keep-alive.

The forwarder decides per connection (issue 4, part 3): a port declared "http" goes straight to
an HttpSession; any other port is sniffed first with detect(), which reads the client's first
bytes for at most SNIFF_DEADLINE and answers "http" or "opaque". A server-first protocol
(PostgreSQL, SMTP) sends nothing, the deadline passes and the connection is opaque: the
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
    pool        the forwarder-wide http_pool.UpstreamPool of idle upstream connections.
    on_switch   on_switch(client_sock, upstream_sock, to_upstream, to_client) after a 101 (or a
                2xx to CONNECT): the session has sent the 101 to the client and hands both
                sockets over (the forwarder starts a raw Relay with to_b/to_a); the session ends
                without closing them. None: Upgrade headers are not forwarded, so upstreams
                never switch, and CONNECT is answered 501.
    metrics     a dict of counters, shared or per session (see _count calls; new_metrics()).

One request, in order: parse (RequestParser), trace headers (traceparent, x-request-id),
route (no matching rule: 404), rate limit (429), fault injection (delay, abort; the matched
rule's fault, else the service's), circuit breaker (503 circuit_open), then tries:
pick an endpoint, reuse or open a connection, send the head and stream the body, read the
response head, and either retry or stream the response to the client. The tries, retries,
timeouts and streaming are http_exchange.py's; this module admits requests and owns the
client connection.

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

from dataplane.http.h1 import (IDEMPOTENT_METHODS, MAX_HEAD, MAX_HEADERS, MAX_REQUEST_LINE, NEED_DATA, PAUSED,
                    BodyWriter, Data, EndOfMessage, HttpError, Request, RequestParser,
                    strip_hop_by_hop, write_head)
from dataplane.http.exchange import ConnectFailed, ClientFailed, Exchange, NoEndpoint, Tries, recv
from dataplane.http.pool import UpstreamPool
from dataplane.http.route import (FAULT_ABORT, NO_ROUTE, RATE_LIMITED, CompiledRule, apply_set_headers,
                         choose_subset, error_reply, local_reply, request_path)
from dataplane.http.sniff import HTTP, MAX_SNIFF, NEED_MORE, OPAQUE, SNIFF_DEADLINE, sniff
from dataplane.host.sockets import reset
from dataplane.http.trace_context import ensure_trace

__all__ = ["detect", "HTTP", "OPAQUE", "HttpSettings", "ServicePolicy", "Upstreams",
           "NoEndpoint", "ConnectFailed", "HttpSession", "DEFAULT_RULE", "new_metrics"]

log = logging.getLogger("glasswing.http")

# x-glasswing-reason values beyond http_route's (and http_exchange's)
HEADER_TIMEOUT = "request_header_timeout"
OVERFLOW = "circuit_open"  # the service's circuit breaker refused the request
NOT_SUPPORTED = "not_supported"

LINGER_BYTES = 256 * 1024  # read and dropped at most while closing after an error


async def detect(sock: socket.socket, loop=None, deadline: float = SNIFF_DEADLINE):
    """("http" or "opaque", the bytes read) for a client's first bytes.

    Reads (plain recv: the bytes are returned, not left in the socket) until http_sniff.sniff
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
    routes: object = None  # http_route.RouteTable; None: every request takes DEFAULT_RULE
    rate_limit: object = None  # token_bucket.TokenBucket on requests; refused: 429
    fault: object = None  # http_route.FaultInjection
    retry_budget: object = None  # retry_budget.RetryBudget, one per service; None: unlimited
    safe_methods: frozenset = frozenset()  # methods retried as if idempotent, e.g. {b"POST"}
    breaker: object = None  # circuit_breaker.CircuitBreaker shared by the service: at L7 each
    # request in flight holds one slot, so max_connections caps concurrent requests (503 above it)


def new_metrics() -> dict:
    return {"requests": 0, "retries": 0, "upstream_connects": 0, "pool_reuses": 0,
            "stale_retries": 0, "switched": 0}


def _closes(data):
    """Whether a local reply says Connection: close."""
    return b"\r\nconnection: close\r\n" in data[:data.find(b"\r\n\r\n") + 2].lower()


# --- the session ---------------------------------------------------------------------------


class HttpSession(Tries):
    """Serves one client connection until it closes, errs, idles out or switches protocols."""

    def __init__(self, client: socket.socket, service: str, port: int, upstreams, *,
                 policy=None, pool: UpstreamPool = None, settings: HttpSettings = None,
                 prefix: bytes = b"", on_switch=None, metrics: dict = None, rng=None, loop=None):
        self.loop = loop or asyncio.get_running_loop()
        self.client = client
        self.service, self.port = service, port
        self.upstreams = upstreams
        self._policy = policy if callable(policy) else (lambda p=policy or ServicePolicy(): p)
        self._own_pool = pool is None
        self.pool = pool or UpstreamPool(self.loop)
        self.settings = settings or HttpSettings()
        self.on_switch = on_switch
        self.metrics = {} if metrics is None else metrics
        for key, zero in new_metrics().items():
            self.metrics.setdefault(key, zero)
        self.rng = rng or random.Random()
        self.parser = RequestParser(**self.settings.parser_limits())
        if prefix:
            self.parser.receive_data(prefix)
        self.switched = False
        self.closed = False
        self.peak_buffered = 0  # most response bytes held at once (bounded by recv_size)

    def _count(self, key, n=1):
        m = self.metrics
        m[key] = m.get(key, 0) + n

    # -- the connection

    async def run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            self._reset_client()
            raise
        except Exception:  # noqa: BLE001 - one broken session must not take others down
            log.exception("http session for %s:%s", self.service, self.port)
            self._reset_client()
        finally:
            if not self.switched and not self.closed:
                self.closed = True
                self.client.close()
            if self._own_pool:
                self.pool.close()

    async def _serve(self):
        first = True
        while True:
            try:
                request = await self._read_head(first)
            except HttpError as e:
                self._count("client_errors")
                self._count_response(e.status)
                self._count(f"local_http_{e.status}")
                await self._send_quietly(error_reply(e))
                return await self._linger_close()
            except TimeoutError:
                if self.parser.buffered:  # part of a head came, the rest did not
                    self._count_response(408)
                    self._count(f"local_{HEADER_TIMEOUT}")
                    await self._send_quietly(local_reply(
                        408, f"request head not complete within {self.settings.head_timeout:g}s",
                        HEADER_TIMEOUT, close=True))
                return await self._linger_close()
            except OSError:
                return
            if request is None:
                return
            first = False
            keep = await self._handle(request)
            if self.switched or self.closed:
                return
            if not keep:
                return await self._linger_close()

    async def _read_head(self, first):
        """The next Request, or None when the client closed or idled out between requests."""
        parser = self.parser
        s = self.settings
        deadline = self.loop.time() + s.head_timeout if first or parser.buffered else None
        while True:
            ev = parser.next_event()
            if ev is NEED_DATA:
                if deadline is None:
                    try:
                        async with asyncio.timeout(s.idle_timeout):
                            data = await recv(self.loop, self.client, s.recv_size)
                    except TimeoutError:
                        self._count("client_idle_closed")
                        return None
                    deadline = self.loop.time() + s.head_timeout
                else:
                    async with asyncio.timeout_at(deadline):
                        data = await recv(self.loop, self.client, s.recv_size)
                parser.receive_data(data)
                continue
            if isinstance(ev, Request):
                return ev
            if ev is PAUSED and not parser.must_close:
                parser.resume()  # an Upgrade request that was not switched
                continue
            return None  # ConnectionClosed, or PAUSED after a closing request

    def _reset_client(self):
        if not self.closed and not self.switched:
            self.closed = True
            reset(self.client)

    async def _send_quietly(self, data):
        try:
            await self.loop.sock_sendall(self.client, data)
        except OSError:
            pass

    async def _to_client(self, data):
        """Send to the client; a client that takes nothing for idle_timeout is given up on."""
        try:
            async with asyncio.timeout(self.settings.idle_timeout):
                await self.loop.sock_sendall(self.client, data)
        except TimeoutError:
            raise ClientFailed(None, "client stopped reading") from None
        except OSError as e:
            raise ClientFailed(None, f"client: {e}") from None

    async def _linger_close(self):
        """Close after a final response: FIN first, then drop what the client still sends for a
        moment, so that our response is not destroyed by a reset over unread bytes."""
        if self.closed:
            return
        sock = self.client
        try:
            sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(self.settings.linger):
                n = 0
                while n < LINGER_BYTES:
                    data = await recv(self.loop, sock, self.settings.recv_size)
                    if not data:
                        break
                    n += len(data)
        except (TimeoutError, OSError):
            pass
        self.closed = True
        sock.close()

    def _count_response(self, status):
        self._count(f"responses_{status // 100}xx")

    # -- one request

    async def _handle(self, request) -> bool:
        """Serve one request; whether the client connection stays open."""
        self._count("requests")
        policy = self._policy()
        ex = Exchange(request, DEFAULT_RULE)
        # Upgrade is forwarded only when someone can take the switched connection over, and
        # not with "Connection: close" (the parser then ends the connection instead of pausing).
        ex.upgrade = (self.on_switch is not None and request.keep_alive
                      and (request.method == b"CONNECT" or request.get(b"upgrade") is not None))
        trace = ensure_trace(request.headers, self.rng)
        ex.request_id = trace.request_id
        try:
            self._take_buffered_body(ex)
        except HttpError as e:
            return await self._client_failed(ex, ClientFailed(e))
        if request.method == b"CONNECT" and not ex.upgrade:
            return await self._local(ex, 501, "CONNECT is not supported here", NOT_SUPPORTED)
        if policy.routes is not None:
            rule = policy.routes.match(request)
            if rule is None:
                path = request_path(request) or request.target.decode("latin-1")[:200]
                return await self._local(
                    ex, 404, f"no route for {request.method.decode('latin-1')} {path} "
                    f"in service {self.service}", NO_ROUTE)
            ex.rule = rule
        if policy.rate_limit is not None and not policy.rate_limit.try_take():
            return await self._local(ex, 429, f"rate limit of service {self.service} exceeded",
                                     RATE_LIMITED)
        injection = ex.rule.fault if ex.rule.fault is not None else policy.fault
        if injection is not None:
            fault = injection.decide(self.rng)
            if fault.delay_s:
                self._count("fault_delays")
                await asyncio.sleep(fault.delay_s)
            if fault.abort_status is not None:
                return await self._local(ex, fault.abort_status, "fault injected", FAULT_ABORT)
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
            return await self._forward(ex)
        refused = breaker.try_acquire()
        if refused is not None:
            return await self._local(ex, 503, f"service {self.service} is at its limit of "
                                     f"{breaker.max_connections} requests in flight", OVERFLOW)
        breaker.connected()  # requests are not pending: the slot is held until the exchange ends
        try:
            return await self._forward(ex)
        finally:
            breaker.release(connected=True)

    def _take_buffered_body(self, ex):
        """Move the request body bytes already received into ex.replay (no I/O), up to
        replay_limit; the pump streams the rest."""
        if ex.writer is None:
            ex.writer = BodyWriter(self.parser.framing == "chunked")
        while not ex.body_done and len(ex.replay) < self.settings.replay_limit:
            ev = self.parser.next_event()  # HttpError: the caller answers it
            if isinstance(ev, Data):
                ex.replay += ex.writer.data(ev)
            elif isinstance(ev, EndOfMessage):
                ex.replay += ex.writer.end(ev.trailers)
                ex.body_done = True
            else:
                return

    async def _local(self, ex, status, text, reason) -> bool:
        """Answer the request ourselves; whether the connection stays open. A body that did not
        arrive completely is not waited for: the connection closes instead."""
        try:
            while not ex.body_done:  # skip what already arrived of the body, without I/O
                ev = self.parser.next_event()
                if isinstance(ev, EndOfMessage):
                    ex.body_done = True
                elif not isinstance(ev, Data):
                    break
        except HttpError:
            pass
        close = True if not (ex.keep_alive and ex.body_done) else None
        data = local_reply(status, text, reason, close=close, head=ex.head_only,
                           extra_headers=((b"x-request-id", ex.request_id.encode("latin-1")),))
        self._count_response(status)
        self._count(f"local_{reason}")
        try:
            await self._to_client(data)
        except ClientFailed:
            self._reset_client()
            return False
        return not _closes(data)

    # -- tries

    async def _client_failed(self, ex, e) -> bool:
        self._count("client_errors")
        if e.error is not None and not ex.committed and not ex.informational:
            self._count_response(e.error.status)
            await self._send_quietly(error_reply(e.error, head=ex.head_only))
            await self._linger_close()
        else:
            self._reset_client()
        return False
