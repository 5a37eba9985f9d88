"""One request's tries against upstream endpoints: the retry loop of the HTTP/1.1 proxy.

A collaborator with an explicit interface. proxy.HttpSession makes one Tries per client
connection and, for each request it admitted (route, rate limit, faults, trace headers, circuit
breaker), awaits forward(ex):

    tries = Tries(client, upstreams, pool, settings, service, port, rng=..., loop=...)
    keep = await tries.forward(ex)   # whether the client connection stays open

    client      a ClientSide (below): the only way to the client connection
    upstreams   a proxy.Upstreams: pick(service, port, subset, exclude) -> key, raising
                NoEndpoint; async connect(key) -> socket or (socket, leftover bytes), raising
                ConnectFailed or OSError; optional report(key, outcome), called exactly once
                per pick with how that try ended (see _report)
    pool        a pool.UpstreamPool: take(key) an idle connection, put(conn) a clean one back
    settings    a proxy.HttpSettings: backoff_base, backoff_cap, recv_size, replay_limit
    rng         the random source of the retry backoff's jitter
    ex          an exchange.Exchange filled by the session; the policy of this request is in
                it: ex.rule (retries, retry_on, timeouts), ex.budget (the service's RetryBudget
                or None), ex.subset, ex.marked_safe, ex.may_replay

forward(ex) tries one endpoint after another: pick (never one already tried while another
fits), take an idle connection from the pool or open one, send the head and stream the body,
read the response head, then retry or stream the response to the client (transfer.Transfer
moves the bytes). It ends every path with exactly one of: the response relayed, a local answer
through client.answer (503 no endpoint or connect failure, 502 reset or bad response, 504
timeout), client.failed for a client that broke or left, or client.reset once a response was
partly sent. Anything else it raises (other than CancelledError) is a bug, which the
session logs before resetting the client.

Retries happen only before anything of the response reached the client, and only when the
route's RetryPolicy allows the outcome (route.retryable: connect failure for any method; reset,
5xx and listed codes for idempotent methods or methods marked safe), attempts remain, the route
timeout has not passed and the service's RetryBudget has room. A retry that is not allowed
passes the upstream's response through as it came. A pooled connection that dies before the
first response byte (the upstream closed it as we reused it) is retried once on a fresh
connection, outside attempts and budget, for requests that may be retried.

Timeouts: the route's per-try timeout bounds one try up to the response head (a try that times
out counts as a 504 for retry_on); the route timeout bounds the whole exchange, answering 504
when nothing was sent yet and cutting the connection otherwise. A route without a timeout, and
the default route, wait as long as the upstream takes: long-polls and slow streams work.

Counters (through client.count): retries, stale_retries, retry_budget_exhausted,
upstream_<outcome> per failed try, upstream_connects, pool_reuses, upstream_timeout_streaming,
and Transfer's: responses_<n>xx of relayed responses, client_aborted, upstream_bad_body,
upstream_reset_streaming.
"""
import asyncio
import logging

from dataplane.http.exchange import (BAD_RESPONSE, CONNECT_ERROR, TIMEOUT, UPSTREAM_RESET,
                                     ClientFailed, ConnectFailed, NoEndpoint, TryFailed)
from dataplane.http.pool import PooledConn
from dataplane.http.route import (CONNECT_FAILURE, NO_HEALTHY_ENDPOINT, REQUEST_TIMEOUT, RESET,
                                  UPSTREAM_ERROR, retryable)
from dataplane.http.transfer import Transfer
from dataplane.policy.backoff import Backoff

log = logging.getLogger("glasswing.http")


class ClientSide:
    """What the tries need from the client connection (client.ClientConnection implements it;
    duck-typed, this class documents it). Every method may be called only while forward() runs.
    """

    sock = None  # the client's socket: only watched for readability and handed over by switch()

    def count(self, key: str, n: int = 1) -> None:
        """Add n to the counter key."""
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        """Send bytes of the response to the client. Raise ClientFailed when the client errs or
        takes nothing for idle_timeout."""
        raise NotImplementedError

    def reset(self) -> None:
        """Reset the client connection (a response broke after it started); idempotent."""
        raise NotImplementedError

    async def body_event(self):
        """The next Data or EndOfMessage of the request body, reading the client as needed.
        Raise ClientFailed: a framing error (with its HttpError), a body stalled for
        idle_timeout, a socket error, any other event."""
        raise NotImplementedError

    def hung_up(self):
        """Called when sock became readable while a response head is awaited, without reading:
        True when the client closed or broke its connection, False when bytes wait (a pipelined
        request), None when nothing is there after all."""
        raise NotImplementedError

    async def answer(self, ex, status: int, text: str, reason: str) -> bool:
        """Answer ex locally (nothing of a response was sent yet); whether the client
        connection stays open."""
        raise NotImplementedError

    async def failed(self, ex, error: ClientFailed) -> bool:
        """The client broke its request or went away: answer error.error if it is an HttpError
        and nothing was sent yet, else reset; whether the connection stays open (never)."""
        raise NotImplementedError

    async def switch(self, upstream, to_client: bytes) -> None:
        """The upstream switched protocols and its head was sent: take the upstream socket
        over (it is no longer the tries'; close it if it cannot be handed on), with to_client
        the bytes the upstream sent past its head. Only asked when the session set ex.upgrade."""
        raise NotImplementedError


class Tries:
    """The tries of the requests of one client connection (see the module docstring)."""

    def __init__(self, client, upstreams, pool, settings, service: str, port: int, *, rng, loop):
        self.client = client
        self.upstreams = upstreams
        self.pool = pool
        self.settings = settings
        self.service, self.port = service, port
        self.rng = rng
        self.loop = loop
        self.transfer = Transfer(client, settings, loop)

    @property
    def peak_buffered(self) -> int:
        """Most response bytes held at once so far (bounded by about recv_size)."""
        return self.transfer.peak_buffered

    async def forward(self, ex) -> bool:
        """Serve ex upstream, retrying as allowed; whether the client connection stays open."""
        rule = ex.rule
        loop = self.loop
        client = self.client
        route_deadline = loop.time() + rule.timeout_s if rule.timeout_s else None
        if ex.budget is not None:
            ex.budget.record_request()
        backoff = None
        fresh = False
        last = None
        while True:
            if ex.client_error is not None:
                return await client.failed(ex, ex.client_error)
            try:
                key = self.upstreams.pick(self.service, self.port, ex.subset, ex.tried)
            except NoEndpoint:
                if last is None:
                    which = f" (subset {ex.subset})" if ex.subset else ""
                    return await client.answer(
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
                return await client.failed(ex, e)
            except TryFailed as f:
                last = f
                client.count(f"upstream_{f.outcome}".replace("-", "_")
                             if isinstance(f.outcome, str) else f"upstream_status_{f.outcome}")
                if (f.stale and not fresh and ex.may_replay and ex.replay is not None
                        and not ex.informational):
                    fresh = True  # the next try opens a connection (idle ones that died
                    ex.tried.discard(key)  # were already dropped by the pool's watch)
                    client.count("stale_retries")
                    continue
                fresh = False
                allowed = f.allowed if f.allowed is not None else self._may_retry(
                    ex, f.outcome, route_deadline)
                if not allowed:
                    return await self._failed(ex, f)
                ex.retries += 1
                client.count("retries")
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
            self.client.count("retry_budget_exhausted")
            return False
        return True

    async def _failed(self, ex, f) -> bool:
        """The local answer to the last failed try."""
        name = self.service
        answer = self.client.answer
        if f.outcome == CONNECT_FAILURE:
            return await answer(
                ex, 503, f"upstream connect error for service {name}: {f.detail}", CONNECT_ERROR)
        if f.outcome == RESET:
            return await answer(ex, 502, f"upstream of service {name} reset the connection "
                                f"before responding: {f.detail}", UPSTREAM_RESET)
        if f.outcome == TIMEOUT:
            return await answer(ex, 504, f"upstream of service {name} timed out", REQUEST_TIMEOUT)
        if f.outcome == BAD_RESPONSE:
            return await answer(ex, 502, f"bad response from upstream of service {name}: "
                                f"{f.detail}", UPSTREAM_ERROR)
        # a retryable status whose retry found no endpoint: say what the last try got
        return await answer(ex, 502, f"upstream of service {name} answered {f.outcome} and "
                            "no endpoint was left to retry", UPSTREAM_ERROR)

    def _report(self, key, outcome):
        """Tell the Upstreams, if it listens (an optional report(key, outcome) method), how a
        try on key ended: a response status, or CONNECT_FAILURE, RESET, TIMEOUT, BAD_RESPONSE, or
        None when the try says nothing about the endpoint (cancelled, a stale pooled connection,
        a client that left before the response head). Called once per pick. The forwarder
        releases the balancer's pick and feeds outlier detection from it."""
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
        transfer = self.transfer
        conn = None if fresh else self.pool.take(key)
        keep_conn = False
        try:
            try:
                async with asyncio.timeout_at(try_deadline):
                    if conn is None:
                        conn = await self._connect(key)
                    else:
                        self.client.count("pool_reuses")
                    response = await transfer.send_and_read_head(ex, conn)
            except TimeoutError:
                raise TryFailed(TIMEOUT, "per-try or route timeout") from None
            status = ex.status = response.status
            if status >= 300 and not ex.upgrade and self._may_retry(ex, status, route_deadline):
                raise TryFailed(status, f"upstream answered {status}", allowed=True)
            try:
                async with asyncio.timeout_at(route_deadline):
                    keep_conn, keep_client = await transfer.relay_response(ex, conn, response)
            except TimeoutError:
                self.client.count("upstream_timeout_streaming")
                if not ex.committed:
                    raise TryFailed(TIMEOUT, "route timeout") from None
                self.client.reset()
                return False
            except (ClientFailed, OSError):
                if not ex.committed:
                    raise
                self.client.reset()
                return False
            return keep_client
        finally:
            await transfer.stop_pump(ex)
            if conn is not None and not ex.handed:
                if keep_conn and ex.body_done and ex.upstream_write_error is None:
                    self.pool.put(conn)
                else:
                    conn.close()

    async def _connect(self, key):
        self.client.count("upstream_connects")
        try:
            got = await self.upstreams.connect(key)
        except (ConnectFailed, OSError) as e:
            raise TryFailed(CONNECT_FAILURE, str(e) or type(e).__name__) from None
        sock, leftover = got if isinstance(got, tuple) else (got, b"")
        conn = PooledConn(key, sock, leftover)
        conn.uses = 1
        return conn
