"""dataplane.http.tries: the retry loop on its own, through its explicit interface, no root.

    RecordingClient (a ClientSide) <- Tries.forward(ex) -> Endpoints (pick/connect/report)
                                            |  real UpstreamPool
                                            +--TCP--> Upstream servers on 127.0.0.1

The client side records what the tries sent, answered, counted and reset; its socket is one
end of a real socketpair, so hanging up is a real EOF. Upstreams are real loopback servers that
read each request (body included) with h1.RequestParser and answer as scripted.
"""
import asyncio
import contextlib
import dataclasses
import random
import socket

from dataplane.http import h1
from dataplane.http.exchange import CONNECT_ERROR, TIMEOUT, ClientFailed, Exchange, NoEndpoint
from dataplane.http.pool import UpstreamPool
from dataplane.http.proxy import DEFAULT_RULE, HttpSettings
from dataplane.http.route import CONNECT_FAILURE, NO_HEALTHY_ENDPOINT
from dataplane.http.tries import Tries
from dataplane.policy.retry_budget import RetryBudget

from tests.support.sockets import closed_port, connected
from tests.support.wait import run

RESET, HANG, CLOSE = "reset", "hang", "close"
SETTINGS = HttpSettings(backoff_base=0.001, backoff_cap=0.002)


def rule(**kw):
    return dataclasses.replace(DEFAULT_RULE, **kw)


def response(code, body=b"", extra=b""):
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s" % (code, len(body), extra, body)


class Upstream:
    """A loopback HTTP/1.1 server, one request per connection: answer(request, body) returns
    response bytes (the connection stays open), (bytes, CLOSE), RESET or HANG.
    got holds (request, body) per request; arrived is set when a request is read."""

    def __init__(self, answer):
        self.answer = answer
        self.got = []
        self.arrived = asyncio.Event()
        self.writers = []

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.addr = self.server.sockets[0].getsockname()
        return self

    async def _serve(self, reader, writer):
        self.writers.append(writer)
        parser = h1.RequestParser()
        request, body = None, bytearray()
        while True:
            ev = parser.next_event()
            if ev is h1.NEED_DATA:
                data = await reader.read(65536)
                parser.receive_data(data)
                if not data and parser.next_event() is h1.NEED_DATA:
                    return
            elif isinstance(ev, h1.Request):
                request = ev
            elif isinstance(ev, h1.Data):
                body += ev.data
            elif isinstance(ev, h1.EndOfMessage):
                break
            else:
                return
        self.got.append((request, bytes(body)))
        self.arrived.set()
        out = self.answer(request, bytes(body))
        if out == RESET:
            writer.transport.abort()
        elif out == HANG:
            await asyncio.Event().wait()  # until the server is closed
        else:
            data, close = out if isinstance(out, tuple) else (out, None)
            writer.write(data)
            await writer.drain()
            if close == CLOSE:
                writer.close()

    async def stop(self):
        for w in self.writers:
            w.transport.abort()
        self.server.close()
        await self.server.wait_closed()


class Endpoints:
    """The Upstreams protocol over named addresses: the first endpoint not tried yet (the first
    of all when every one was tried), real non-blocking connects, reports recorded."""

    def __init__(self, **addrs):
        self.addrs = addrs
        self.reports = []

    def pick(self, service, port, subset, exclude):
        if not self.addrs:
            raise NoEndpoint(service)
        return next((k for k in self.addrs if k not in exclude), next(iter(self.addrs)))

    async def connect(self, key):
        return await connected(self.addrs[key])

    def report(self, key, outcome):
        self.reports.append((key, outcome))


@contextlib.asynccontextmanager
async def upstreams(**answers):
    """(Upstreams by name, Endpoints over them in that order), the servers stopped on the way
    out. An answer of None is an endpoint nothing listens on (its connects are refused)."""
    ups = {name: await Upstream(answer).start() for name, answer in answers.items() if answer}
    try:
        yield ups, Endpoints(**{name: ups[name].addr if answer else closed_port()
                                for name, answer in answers.items()})
    finally:
        for u in ups.values():
            await u.stop()


class RecordingClient:
    """A ClientSide that records everything; body holds the request body events to hand out."""

    def __init__(self, body=()):
        self.sock, self.peer = socket.socketpair()
        self.sock.setblocking(False)
        self.body = list(body)
        self.sent = bytearray()
        self.counts = {}
        self.answers = []  # (status, reason)
        self.failures = []  # ClientFailed
        self.resets = 0

    def count(self, key, n=1):
        self.counts[key] = self.counts.get(key, 0) + n

    async def send(self, data):
        self.sent += data

    def reset(self):
        self.resets += 1

    async def body_event(self):
        if not self.body:
            raise ClientFailed(None, "the test's body ran out")
        return self.body.pop(0)

    def hung_up(self):
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return None

    async def answer(self, ex, status, text, reason):
        self.answers.append((status, reason))
        return True

    async def failed(self, ex, error):
        self.failures.append(error)
        return False

    async def switch(self, upstream, to_client):
        raise AssertionError("no test here switches protocols")

    def response(self):
        """(status, headers, body) of what the tries sent."""
        p = h1.ResponseParser()
        p.receive_data(bytes(self.sent))
        head, body = None, b""
        while True:
            ev = p.next_event()
            if isinstance(ev, h1.Response):
                head = ev
            elif isinstance(ev, h1.Data):
                body += ev.data
            else:
                return head.status, head.headers, body

    def close(self):
        self.sock.close()
        self.peer.close()


def exchange(raw: bytes, the_rule=DEFAULT_RULE, *, body_done=True, replay=b"", marked_safe=False,
             budget=None):
    """An Exchange as HttpSession fills it for the request head raw."""
    p = h1.RequestParser()
    p.receive_data(raw)
    request = p.next_event()
    ex = Exchange(request, the_rule)
    ex.head = raw
    ex.writer = h1.BodyWriter(p.framing == "chunked")
    ex.replay = bytearray(replay)
    ex.body_done = body_done
    ex.request_id = "test"
    ex.marked_safe = marked_safe
    ex.may_replay = marked_safe or request.method in h1.IDEMPOTENT_METHODS
    ex.budget = budget
    return ex


async def forward(client, endpoints, ex, settings=SETTINGS):
    loop = asyncio.get_running_loop()
    pool = UpstreamPool(loop)
    tries = Tries(client, endpoints, pool, settings, "web", 80, rng=random.Random(1), loop=loop)
    try:
        return await tries.forward(ex), pool
    finally:
        client.close()


GET = b"GET /x HTTP/1.1\r\nhost: web\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nhost: web\r\ncontent-length: 6\r\n\r\n"


def test_a_503_is_retried_on_another_endpoint_and_every_pick_is_reported():
    async def main():
        async with upstreams(a=lambda r, b: response(503, b"a"), b=lambda r, b: response(200, b"b")) as (_u, ends):
            client = RecordingClient()
            keep, pool = await forward(client, ends, exchange(GET, rule(retries=2, retry_on=frozenset({"503"}))))
            status, headers, body = client.response()
            assert (keep, status, body) == (True, 200, b"b")
            assert (b"x-glasswing-retries", b"1") in headers
            assert ends.reports == [("a", 503), ("b", 200)]
            assert client.counts["retries"] == 1 and client.counts["upstream_status_503"] == 1
            kept = pool.take("b")  # b's answer was clean: its connection went back to the pool
            assert kept is not None and pool.take("a") is None
            kept.close()
            pool.close()
    run(main())


def test_connect_failures_use_every_attempt_then_answer_503_locally():
    async def main():
        async with upstreams(a=None, b=None) as (_u, ends):
            client = RecordingClient()
            keep, pool = await forward(client, ends, exchange(GET))  # DEFAULT_RULE: 2 retries
            pool.close()
        assert (keep, client.answers, client.sent) == (True, [(503, CONNECT_ERROR)], bytearray())
        assert ends.reports == [("a", CONNECT_FAILURE), ("b", CONNECT_FAILURE), ("a", CONNECT_FAILURE)]
        assert client.counts["retries"] == 2 and client.counts["upstream_connect_failure"] == 3
    run(main())


def test_no_endpoint_is_answered_503_without_a_report():
    async def main():
        async with upstreams() as (_u, ends):
            client = RecordingClient()
            _keep, pool = await forward(client, ends, exchange(GET))
            pool.close()
        assert client.answers == [(503, NO_HEALTHY_ENDPOINT)] and ends.reports == []
    run(main())


def test_a_post_not_marked_safe_gets_its_503_passed_through():
    async def main():
        async with upstreams(a=lambda r, b: response(503, b"a"), b=None) as (_u, ends):
            client = RecordingClient()
            ex = exchange(POST + b"abcdef", rule(retries=2, retry_on=frozenset({"503"})),
                          replay=b"abcdef")
            _keep, pool = await forward(client, ends, ex)
            pool.close()
        assert client.response()[0] == 503 and ends.reports == [("a", 503)]
        assert "retries" not in client.counts or client.counts["retries"] == 0
    run(main())


def test_an_empty_retry_budget_passes_the_failure_through():
    async def main():
        async with upstreams(a=lambda r, b: response(503, b"a"), b=lambda r, b: response(200, b"b")) as (ups, ends):
            client = RecordingClient()
            budget = RetryBudget(clock=lambda: 0.0, ratio=0.0, min_per_second=0.0)
            ex = exchange(GET, rule(retries=2, retry_on=frozenset({"503"})), budget=budget)
            _keep, pool = await forward(client, ends, ex)
            pool.close()
        assert client.response()[0] == 503 and ends.reports == [("a", 503)]
        assert client.counts["retry_budget_exhausted"] == 1 and ups["b"].got == []
    run(main())


def test_a_streamed_body_is_kept_and_replayed_on_the_retry():
    async def main():
        async with upstreams(a=lambda r, b: response(503), b=lambda r, body: response(200, body)) as (ups, ends):
            client = RecordingClient(body=[h1.Data(b"def"), h1.EndOfMessage()])
            ex = exchange(POST, rule(retries=1, retry_on=frozenset({"503"})), body_done=False,
                          replay=b"abc", marked_safe=True)  # "abc" came with the head
            _keep, pool = await forward(client, ends, ex)
            pool.close()
        assert client.response()[::2] == (200, b"abcdef")
        assert [body for _r, body in ups["a"].got + ups["b"].got] == [b"abcdef", b"abcdef"]
    run(main())


def test_a_per_try_timeout_counts_as_504_and_moves_on():
    async def main():
        async with upstreams(a=lambda r, b: HANG, b=lambda r, b: response(200, b"b")) as (_u, ends):
            client = RecordingClient()
            the_rule = rule(retries=1, retry_on=frozenset({"504"}), per_try_timeout_s=0.5)
            _keep, pool = await forward(client, ends, exchange(GET, the_rule))
            pool.close()
        assert client.response()[::2] == (200, b"b")
        assert ends.reports == [("a", TIMEOUT), ("b", 200)]
    run(main())


def test_a_client_hanging_up_gives_up_the_try_without_blaming_the_endpoint():
    async def main():
        async with upstreams(a=lambda r, b: HANG) as (ups, ends):
            client = RecordingClient()
            task = asyncio.ensure_future(forward(client, ends, exchange(GET)))
            await ups["a"].arrived.wait()
            client.peer.close()  # EOF on the client's socket while the response head is awaited
            keep, pool = await task
            pool.close()
        assert keep is False and len(client.failures) == 1 and client.failures[0].error is None
        assert client.counts["client_aborted"] == 1 and ends.reports == [("a", None)]
    run(main())


def test_an_upstream_closing_inside_the_body_resets_the_client_without_a_retry():
    # a head promising 100 bytes, 10 of them, then the upstream closes: the head went out
    def short(r, b):
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789", CLOSE

    async def main():
        async with upstreams(a=short, b=None) as (_u, ends):
            client = RecordingClient()
            keep, pool = await forward(client, ends, exchange(GET, rule(retries=2, retry_on=frozenset({"5xx"}))))
            pool.close()
        assert keep is False and client.resets == 1 and client.answers == []
        assert bytes(client.sent) == b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"
        assert ends.reports == [("a", 200)] and client.counts["upstream_bad_body"] == 1
    run(main())
