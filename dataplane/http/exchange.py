"""One request's tries against upstream endpoints, for the HTTP/1.1 proxy session.

http_proxy.HttpSession admits a request (route, rate limit, faults, trace headers) and then
calls Tries._forward, mixed into it: pick an endpoint (Upstreams.pick), take an idle connection
from the pool or open one (Upstreams.connect), send the head and stream the body, read the
response head, then retry or stream the response to the client.

Bodies are streamed in both directions; nothing holds a whole body. A request body is copied
into a replay buffer while it is at most replay_limit (64 KiB) long, so that a failed try can be
replayed; a longer body is streamed without a copy and its request is never retried. The
request body is sent while the response is read (full duplex), so "Expect: 100-continue" works:
the upstream's 100 reaches the client, which then sends the body.

Retries happen only before anything of the response reached the client, and only when the
route's RetryPolicy allows the outcome (http_route.retryable: connect failure for any method;
reset, 5xx and listed codes for idempotent methods or methods marked safe), attempts remain,
the route timeout has not passed and the service's RetryBudget has room. A retry that is not
allowed passes the upstream's response through as it came. A pooled connection that dies
before the first response byte (the upstream closed it as we reused it) is retried once on a
fresh connection, outside attempts and budget, for requests that may be retried.

Timeouts: the route's per-try timeout bounds one try up to the response head (a try that times
out counts as a 504 for retry_on); the route timeout bounds the whole exchange, answering 504
when nothing was sent yet and cutting the connection otherwise. A route without a timeout, and
the default route, wait as long as the upstream takes: long-polls and slow streams work. A
client that closes while its response head is awaited gives up the try (nginx does the same),
so an abandoned long-poll does not hold its upstream connection.
"""
import asyncio
import dataclasses
import inspect
import logging
import socket

from dataplane.policy.backoff import Backoff
from dataplane.http.h1 import (NEED_DATA, PAUSED, BodyWriter, Data, EndOfMessage, HttpError,
                    InformationalResponse, Response, Switched, strip_hop_by_hop, write_head)
from dataplane.http.pool import PooledConn
from dataplane.http.route import (CONNECT_FAILURE, NO_HEALTHY_ENDPOINT, REQUEST_TIMEOUT, RESET,
                         UPSTREAM_ERROR, retryable)

log = logging.getLogger("glasswing.http")

# x-glasswing-reason values beyond http_route's
CONNECT_ERROR = "upstream_connect_error"
UPSTREAM_RESET = "upstream_reset"

TIMEOUT = "timeout"  # try outcomes beyond http_route's CONNECT_FAILURE and RESET
BAD_RESPONSE = "bad_response"


class NoEndpoint(Exception):
    """Upstreams.pick found no healthy endpoint (in the subset asked for)."""


class ConnectFailed(Exception):
    """Upstreams.connect could not reach the endpoint (refused, unreachable, tunnel reject)."""


# --- socket helpers ------------------------------------------------------------------------


def _wake(fut, *_):
    if not fut.done():
        fut.set_result(None)


async def wait_readable(loop, sock, also=None, other=None):
    """Until sock is readable, the task `also` finishes, or the socket `other` is readable.
    Cancelling loses no data: nothing is read here."""
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _wake, fut)
    done = None
    if also is not None:
        done = lambda _task: _wake(fut)  # noqa: E731
        also.add_done_callback(done)
    if other is not None:
        loop.add_reader(other.fileno(), _wake, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
        if done is not None:
            also.remove_done_callback(done)
        if other is not None:
            loop.remove_reader(other.fileno())


async def recv(loop, sock, n):
    """sock.recv(n) on a non-blocking socket, waiting for readiness; safe to cancel."""
    while True:
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            await wait_readable(loop, sock)


class ClientFailed(Exception):
    """The client broke its request (error: the HttpError to answer) or went away (None)."""

    def __init__(self, error=None, why=""):
        super().__init__(why or (error and error.reason) or "client went away")
        self.error = error


class TryFailed(Exception):
    """One try failed before anything of its final response reached the client."""

    def __init__(self, outcome, detail, stale=False, allowed=None):
        super().__init__(detail)
        self.outcome = outcome  # CONNECT_FAILURE, RESET, TIMEOUT, BAD_RESPONSE or a status
        self.detail = detail
        self.stale = stale  # a reused pooled connection died before any response byte
        self.allowed = allowed  # retry already decided (and budget spent) by the try


class Exchange:
    """One request and its tries."""

    __slots__ = ("request", "method", "rule", "subset", "head", "writer", "replay", "body_done",
                 "pump", "client_error", "upstream_write_error", "keep_alive", "upgrade",
                 "head_only", "marked_safe", "may_replay", "retries", "tried", "informational",
                 "committed", "handed", "request_id", "budget", "watch_client", "status")

    def __init__(self, request, rule):
        self.request = request
        self.method = request.method
        self.rule = rule  # http_route.CompiledRule
        self.subset = None
        self.head = b""
        self.writer = None
        self.replay = bytearray()  # framed body bytes taken so far; None: too long to replay
        self.body_done = False
        self.pump = None  # task streaming the rest of the body to the current try
        self.client_error = None  # a ClientFailed the pump met
        self.upstream_write_error = None
        self.keep_alive = request.keep_alive
        self.upgrade = False
        self.head_only = request.method == b"HEAD"
        self.marked_safe = False
        self.may_replay = False  # idempotent or marked safe
        self.retries = 0
        self.tried = set()
        self.informational = False  # a 1xx went to the client: no more retries
        self.committed = False  # the final response head went to the client
        self.handed = False  # the upstream socket went to on_switch
        self.request_id = None
        self.budget = None
        self.watch_client = True
        self.status = None  # the current try's final response status


# --- the tries ---------------------------------------------------------------------------


class Tries:
    """The tries of one request, mixed into http_proxy.HttpSession. Uses the session's loop,
    client socket and parser, upstreams, pool, settings, service, port, on_switch and rng, and
    its _count, _local, _client_failed, _to_client and _reset_client."""

    async def _forward(self, ex) -> bool:
        """Serve ex upstream, retrying as allowed; whether the client connection stays open."""
        rule = ex.rule
        loop = self.loop
        route_deadline = loop.time() + rule.timeout_s if rule.timeout_s else None
        if ex.budget is not None:
            ex.budget.record_request()
        backoff = None
        fresh = False
        last = None
        while True:
            if ex.client_error is not None:
                return await self._client_failed(ex, ex.client_error)
            try:
                key = self.upstreams.pick(self.service, self.port, ex.subset, ex.tried)
            except NoEndpoint:
                if last is None:
                    which = f" (subset {ex.subset})" if ex.subset else ""
                    return await self._local(
                        ex, 503, f"no healthy endpoint for service {self.service}{which}",
                        NO_HEALTHY_ENDPOINT)
                return await self._failed(ex, last)
            ex.tried.add(key)
            try_deadline = route_deadline
            if rule.per_try_timeout_s:
                t = loop.time() + rule.per_try_timeout_s
                try_deadline = t if route_deadline is None else min(t, route_deadline)
            try:
                return await self._try(ex, key, fresh, try_deadline, route_deadline)
            except ClientFailed as e:
                return await self._client_failed(ex, e)
            except TryFailed as f:
                last = f
                self._count(f"upstream_{f.outcome}".replace("-", "_") if isinstance(f.outcome, str)
                            else f"upstream_status_{f.outcome}")
                if (f.stale and not fresh and ex.may_replay and ex.replay is not None
                        and not ex.informational):
                    fresh = True  # the next try opens a connection (idle ones that died
                    ex.tried.discard(key)  # were already dropped by the pool's watch)
                    self._count("stale_retries")
                    continue
                fresh = False
                allowed = f.allowed if f.allowed is not None else self._may_retry(
                    ex, f.outcome, route_deadline)
                if not allowed:
                    return await self._failed(ex, f)
                ex.retries += 1
                self._count("retries")
                if backoff is None:
                    backoff = Backoff(self.settings.backoff_base, self.settings.backoff_cap,
                                      rng=self.rng)
                pause = backoff.next()
                if route_deadline is not None:
                    pause = min(pause, max(0.0, route_deadline - loop.time()))
                await asyncio.sleep(pause)

    def _may_retry(self, ex, outcome, route_deadline) -> bool:
        """Whether to retry after outcome; spends the retry budget when it says yes."""
        if ex.replay is None or ex.informational or ex.retries >= ex.rule.retries:
            return False
        if route_deadline is not None and self.loop.time() >= route_deadline:
            return False
        if outcome == TIMEOUT:
            outcome = 504
        elif outcome == BAD_RESPONSE:
            return False
        if not retryable(ex.method, outcome, ex.rule, ex.marked_safe):
            return False
        if ex.budget is not None and not ex.budget.try_retry():
            self._count("retry_budget_exhausted")
            return False
        return True

    async def _failed(self, ex, f) -> bool:
        """The local answer to the last failed try."""
        name = self.service
        if f.outcome == CONNECT_FAILURE:
            return await self._local(
                ex, 503, f"upstream connect error for service {name}: {f.detail}", CONNECT_ERROR)
        if f.outcome == RESET:
            return await self._local(ex, 502, f"upstream of service {name} reset the connection "
                                     f"before responding: {f.detail}", UPSTREAM_RESET)
        if f.outcome == TIMEOUT:
            return await self._local(ex, 504, f"upstream of service {name} timed out",
                                     REQUEST_TIMEOUT)
        if f.outcome == BAD_RESPONSE:
            return await self._local(ex, 502, f"bad response from upstream of service {name}: "
                                     f"{f.detail}", UPSTREAM_ERROR)
        # a retryable status whose retry found no endpoint: say what the last try got
        return await self._local(ex, 502, f"upstream of service {name} answered {f.outcome} and "
                                 "no endpoint was left to retry", UPSTREAM_ERROR)

    def _report(self, key, outcome):
        """Tell the Upstreams, if it listens (an optional report(key, outcome) method), how a
        try on key ended: a response status, or CONNECT_FAILURE, RESET, TIMEOUT, BAD_RESPONSE, or
        None when the try says nothing about the endpoint (cancelled, a stale pooled connection).
        Called once per pick. The forwarder releases the balancer's pick and feeds outlier
        detection from it."""
        report = getattr(self.upstreams, "report", None)
        if report is not None:
            try:
                report(key, outcome)
            except Exception:  # noqa: BLE001 - bookkeeping must not break the request
                log.exception("upstreams.report")

    async def _try(self, ex, key, fresh, try_deadline, route_deadline) -> bool:
        outcome = RESET  # ClientFailed and OSError after the head: the exchange broke
        ex.status = None
        try:
            result = await self._try_once(ex, key, fresh, try_deadline, route_deadline)
            outcome = ex.status if ex.status is not None else outcome
            return result
        except TryFailed as f:
            # a pooled connection that died as it was reused says nothing about the endpoint
            outcome = None if f.stale else f.outcome
            raise
        except ClientFailed:
            outcome = ex.status  # the client's doing, not the endpoint's
            raise
        except asyncio.CancelledError:
            outcome = None
            raise
        finally:
            self._report(key, outcome)

    async def _try_once(self, ex, key, fresh, try_deadline, route_deadline) -> bool:
        conn = None if fresh else self.pool.take(key)
        keep_conn = False
        try:
            try:
                async with asyncio.timeout_at(try_deadline):
                    if conn is None:
                        conn = await self._connect(key)
                    else:
                        self._count("pool_reuses")
                    response = await self._send_and_read_head(ex, conn)
            except TimeoutError:
                raise TryFailed(TIMEOUT, "per-try or route timeout") from None
            status = ex.status = response.status
            if status >= 300 and not ex.upgrade and self._may_retry(ex, status, route_deadline):
                raise TryFailed(status, f"upstream answered {status}", allowed=True)
            try:
                async with asyncio.timeout_at(route_deadline):
                    keep_conn, keep_client = await self._relay_response(ex, conn, response)
            except TimeoutError:
                self._count("upstream_timeout_streaming")
                if not ex.committed:
                    raise TryFailed(TIMEOUT, "route timeout") from None
                self._reset_client()
                return False
            except (ClientFailed, OSError):
                if not ex.committed:
                    raise
                self._reset_client()
                return False
            return keep_client
        finally:
            await self._stop_pump(ex)
            if conn is not None and not ex.handed:
                if keep_conn and ex.body_done and ex.upstream_write_error is None:
                    self.pool.put(conn)
                else:
                    conn.close()

    async def _connect(self, key):
        self._count("upstream_connects")
        try:
            got = await self.upstreams.connect(key)
        except (ConnectFailed, OSError) as e:
            raise TryFailed(CONNECT_FAILURE, str(e) or type(e).__name__) from None
        sock, leftover = got if isinstance(got, tuple) else (got, b"")
        conn = PooledConn(key, sock, leftover)
        conn.uses = 1
        return conn

    async def _send_and_read_head(self, ex, conn):
        """Send the request (head, replayed body, then the pump for the rest) and read up to the
        final response head, passing 1xx on."""
        parser = conn.parser
        parser.expect(ex.method)
        stale = conn.reused
        try:
            await self.loop.sock_sendall(conn.sock, ex.head + ex.replay if ex.replay else ex.head)
        except OSError as e:
            raise TryFailed(RESET, f"sending the request: {e}", stale=stale) from None
        if not ex.body_done:
            ex.client_error = ex.upstream_write_error = None
            ex.pump = self.loop.create_task(self._pump(ex, conn.sock))
        got_bytes = False
        while True:
            try:
                ev = parser.next_event()
            except HttpError as e:
                raise TryFailed(BAD_RESPONSE, e.reason) from None
            if ev is NEED_DATA:
                try:
                    data = await self._upstream_recv(ex, conn, watch_client=not got_bytes)
                except OSError as e:
                    raise TryFailed(RESET, str(e), stale=stale and not got_bytes) from None
                if not data:
                    raise TryFailed(RESET, "the connection closed before a response",
                                    stale=stale and not got_bytes)
                got_bytes = True
                parser.receive_data(data)
                continue
            if isinstance(ev, Response):
                return ev
            if isinstance(ev, InformationalResponse):
                if ex.request.version != b"1.0":  # RFC 9110 15.2: no 1xx to HTTP/1.0 clients
                    head = write_head(dataclasses.replace(ev, headers=strip_hop_by_hop(ev.headers)))
                    ex.informational = True
                    await self._to_client(head)
                continue
            raise TryFailed(BAD_RESPONSE, f"unexpected {ev!r} before a response")

    async def _upstream_recv(self, ex, conn, watch_client=False):
        """recv from the upstream; wakes early to raise the pump's client failure, and with
        watch_client (waiting for a response head, the request fully sent) to raise when the
        client went away, so that an abandoned long-poll does not hold its upstream."""
        sock = conn.sock
        while True:
            if ex.client_error is not None:
                raise ex.client_error
            try:
                return sock.recv(self.settings.recv_size)
            except (BlockingIOError, InterruptedError):
                pass
            pump = ex.pump if ex.pump is not None and not ex.pump.done() else None
            client = None
            if watch_client and ex.watch_client and pump is None and ex.body_done:
                client = self.client
            await wait_readable(self.loop, sock, pump, client)
            if client is not None:
                self._check_client(ex)

    def _check_client(self, ex):
        """The client became readable while its response is awaited. EOF or an error means it
        gave up (nginx does the same): raise. Bytes (a pipelined request) stay unread, and the
        client is not watched again for this request."""
        try:
            gone = self.client.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            gone = True
        if not gone:
            ex.watch_client = False
            return
        self._count("client_aborted")
        raise ClientFailed(None, "client closed while waiting for the response")

    async def _pump(self, ex, usock):
        """Stream the rest of the request body to the upstream (a task beside the response)."""
        parser, loop, s = self.parser, self.loop, self.settings
        while True:
            try:
                ev = parser.next_event()
            except HttpError as e:
                ex.client_error = ClientFailed(e)
                return
            if ev is NEED_DATA:
                try:
                    async with asyncio.timeout(s.idle_timeout):
                        data = await recv(loop, self.client, s.recv_size)
                except TimeoutError:
                    ex.client_error = ClientFailed(None, "request body stalled")
                    return
                except OSError as e:
                    ex.client_error = ClientFailed(None, f"client: {e}")
                    return
                parser.receive_data(data)
                continue
            if isinstance(ev, Data):
                out = ex.writer.data(ev)
            elif isinstance(ev, EndOfMessage):
                out = ex.writer.end(ev.trailers)
                ex.body_done = True
            else:
                ex.client_error = ClientFailed(None, f"unexpected {ev!r} in a request body")
                return
            if ex.replay is not None:
                ex.replay += out
                if len(ex.replay) > s.replay_limit:
                    ex.replay = None
            try:
                await loop.sock_sendall(usock, out)
            except OSError as e:
                ex.upstream_write_error = e  # the response side sees the upstream's state
                return
            if ex.body_done:
                return

    async def _stop_pump(self, ex):
        pump, ex.pump = ex.pump, None
        if pump is None:
            return
        if not pump.done():
            pump.cancel()
            await asyncio.wait((pump,))
        if not pump.cancelled() and pump.exception() is not None:
            log.error("request body pump failed", exc_info=pump.exception())
            ex.client_error = ex.client_error or ClientFailed(None, "pump failed")

    async def _relay_response(self, ex, conn, response):
        """Stream the response to the client; (upstream reusable, client keeps alive)."""
        parser = conn.parser
        request = ex.request
        status = response.status
        if status == 101 or (ex.method == b"CONNECT" and 200 <= status < 300):
            return await self._switch(ex, conn, response)
        client_11 = request.version != b"1.0"
        framing = parser.framing
        headers = strip_hop_by_hop(response.headers)
        # A response that starts before the request body ended (413 to an upload, say) ends
        # the connection: the rest of that body may never be read.
        close_client = not ex.keep_alive or not ex.body_done
        if framing == "chunked" and not client_11:
            headers = tuple(h for h in headers if h[0].lower() != b"transfer-encoding")
            writer = BodyWriter(False)
            close_client = True
        elif framing == "close":
            if client_11:
                headers += ((b"Transfer-Encoding", b"chunked"),)
                writer = BodyWriter(True)
            else:
                writer = BodyWriter(False)
                close_client = True
        else:
            writer = BodyWriter(framing == "chunked")
        if ex.retries:
            headers += ((b"x-glasswing-retries", b"%d" % ex.retries),)
        if close_client:
            headers += ((b"Connection", b"close"),)
        elif not client_11:
            headers += ((b"Connection", b"keep-alive"),)
        out = bytearray(write_head(dataclasses.replace(response, headers=headers)))
        ex.committed = True
        self._count_response(status)
        while True:
            try:
                ev = parser.next_event()
            except HttpError:
                self._count("upstream_bad_body")
                if out:
                    await self._to_client(bytes(out))
                self._reset_client()
                return False, False
            if isinstance(ev, Data):
                out += writer.data(ev)
            elif isinstance(ev, EndOfMessage):
                out += writer.end(ev.trailers)
                break
            elif ev is NEED_DATA:
                if out:
                    if len(out) > self.peak_buffered:
                        self.peak_buffered = len(out)
                    data, out = out, bytearray()
                    await self._to_client(data)
                try:
                    data = await self._upstream_recv(ex, conn)
                except OSError:
                    self._count("upstream_reset_streaming")
                    self._reset_client()
                    return False, False
                parser.receive_data(data)
            else:
                self._reset_client()
                return False, False
        if len(out) > self.peak_buffered:
            self.peak_buffered = len(out)
        await self._to_client(bytes(out))
        if ex.client_error is not None or not ex.body_done:
            return False, False
        try:
            reusable = parser.next_event() is NEED_DATA and not parser.buffered
        except HttpError:
            reusable = False
        return reusable, not close_client

    async def _switch(self, ex, conn, response):
        """101 Switching Protocols (or 2xx to CONNECT): hand both sockets to on_switch."""
        if not ex.upgrade or self.on_switch is None or not ex.body_done:
            raise TryFailed(BAD_RESPONSE,
                            f"upstream switched protocols ({response.status}) unasked")
        headers = strip_hop_by_hop(response.headers, keep_upgrade=ex.method != b"CONNECT")
        head = write_head(dataclasses.replace(response, headers=headers))
        to_client = b""
        while True:
            ev = conn.parser.next_event()
            if isinstance(ev, Switched):
                to_client = ev.data
                break
            if not isinstance(ev, EndOfMessage):
                raise TryFailed(BAD_RESPONSE, f"unexpected {ev!r} after {response.status}")
        ex.committed = True
        self._count_response(response.status)
        await self._to_client(head)
        if self.parser.next_event() is not PAUSED:
            raise AssertionError("request parser not paused after an upgrade request")
        to_upstream = self.parser.switch_protocol()
        ex.handed = True
        self.switched = True
        self._count("switched")
        result = self.on_switch(self.client, conn.sock, to_upstream, to_client)
        if inspect.isawaitable(result):
            await result
        return False, False
