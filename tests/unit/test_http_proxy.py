"""dataplane.http.proxy: the HTTP/1.1 session end to end over loopback TCP, no root.

    client (raw HTTP bytes) --TCP--> Proxy: accept -> HttpSession --TCP--> Server(s)
                                               |  FakeUpstreams.pick/connect
                                               |  UpstreamPool (shared by the sessions)

Servers are tiny HTTP/1.1 servers (tests/support/http_harness.py: asyncio streams + http1.RequestParser) whose
handlers script each misbehaviour: slow, reset, 503 first, chunked streams, 101 then echo,
long-polls. Clients read responses with http1.ResponseParser.
"""
import asyncio
import hashlib
import random
import socket

import pytest

from dataplane.http import h1 as h
from dataplane.http import route as hr
from dataplane.http.proxy import HTTP, OPAQUE, HttpSettings, ServicePolicy, detect
from dataplane.policy.retry_budget import RetryBudget
from dataplane.policy.token_bucket import TokenBucket

from tests.support.http_harness import CLOSE, RESET, Client, FakeUpstreams, Proxy, Server, ok, routes, setup, status
from tests.support.sockets import closed_port, readable_bytes
from tests.support.wait import ends_after, ends_before, run, wait_until_async


# --- keep-alive and pooling --------------------------------------------------------------------


def test_keep_alive_reuses_client_and_upstream_connections():
    async def main():
        servers, ups, proxy, client = await setup()
        for _ in range(5):
            resp, body, _ = await client.request()
            assert resp.status == 200 and body == b"s0"
        second = await Client(proxy.addr).open()  # another client: the pooled upstream serves it
        for _ in range(3):
            resp, body, _ = await second.request()
            assert resp.status == 200
        assert len(proxy.sessions) == 2
        assert servers[0].connections == 1 and len(servers[0].requests) == 8
        assert proxy.metrics["pool_reuses"] == 7
        assert proxy.metrics["responses_2xx"] == 8
        await proxy.stop()
    run(main())


def test_dead_pooled_connection_is_retried_on_a_fresh_one_for_get():
    def handler(ctx, req, body):
        if ctx.req_no == 2:
            return CLOSE  # the upstream's idle close racing our reuse: the request is unanswered
        return ok()

    async def main():
        servers, ups, proxy, client = await setup([handler])
        assert (await client.request())[0].status == 200
        resp, body, _ = await client.request()
        assert resp.status == 200 and body == b"ok"
        assert servers[0].connections == 2
        assert proxy.metrics["stale_retries"] == 1 and proxy.metrics["retries"] == 0
        await proxy.stop()
    run(main())


def test_idle_pooled_connection_closed_by_upstream_leaves_the_pool():
    def handler(ctx, req, body):
        return ok(extra=b"connection: close\r\n") if ctx.req_no > 1 else ok()

    async def main():
        # the server closes after its reply: the session sees "connection: close", no pooling
        servers, ups, proxy, client = await setup([handler])
        assert (await client.request())[0].status == 200
        await wait_until_async(lambda: proxy.pool.idle("s0") == 1, what="the connection back in the pool")
        assert (await client.request())[0].status == 200
        await wait_until_async(lambda: servers[0].closed == 1, what="the proxy closing the connection")
        assert proxy.pool.idle("s0") == 0
        assert (await client.request())[0].status == 200
        assert servers[0].connections == 2
        await proxy.stop()
    run(main())


def test_pipelined_requests_are_served_in_order():
    def handler(ctx, req, body):
        return ok(req.target)

    async def main():
        servers, ups, proxy, client = await setup([handler])
        await client.send(b"".join(b"GET /%d HTTP/1.1\r\nhost: web\r\n\r\n" % i for i in range(4)))
        for i in range(4):
            resp, body, _ = await client.response()
            assert body == b"/%d" % i
        await proxy.stop()
    run(main())


def test_http10_client_head_and_connection_close():
    def handler(ctx, req, body):
        if req.method == b"HEAD":
            return b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    async def main():
        servers, ups, proxy, client = await setup([handler])
        # HEAD: headers only, Content-Length kept, the connection stays usable
        await client.send(b"HEAD / HTTP/1.1\r\nhost: web\r\n\r\n")
        resp, body, _ = await client.response(b"HEAD")
        assert resp.status == 200 and resp.get(b"content-length") == b"5" and body == b""
        # HTTP/1.0 keep-alive client gets the chunked body de-chunked, then the connection ends
        await client.send(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        resp, body, _ = await client.response()
        assert body == b"abcde" and resp.get(b"transfer-encoding") is None
        assert resp.get(b"connection") == b"close"
        assert await client.closed()
        # Host was added for the HTTP/1.0 request
        assert servers[0].requests[1][0].get(b"host") == b"web"
        # Connection: close from an HTTP/1.1 client
        c2 = await Client(proxy.addr).open()
        await c2.send(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        resp, body, _ = await c2.response()
        assert body == b"abcde" and resp.get(b"connection") == b"close"
        assert await c2.closed()
        await proxy.stop()
    run(main())


def test_expect_100_continue_passes_through():
    async def handler(ctx, req, body):
        return ok(body)

    class ContinueServer(Server):
        async def _serve(self, reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"expect: 100-continue" in head.lower()
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            body = await reader.readexactly(5)
            writer.write(ok(body))
            await writer.drain()
            writer.close()

    async def main():
        server = await ContinueServer(handler).start()
        ups = FakeUpstreams({"s0": (server.addr, {})})
        proxy = await Proxy(ups).start()
        client = await Client(proxy.addr).open()
        await client.send(b"POST / HTTP/1.1\r\nhost: web\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 100 Continue")
        await client.send(b"hello")
        resp, body, _ = await client.response(b"POST")
        assert resp.status == 200 and body == b"hello"
        await proxy.stop()
    run(main())


# --- retries ---------------------------------------------------------------------------------


def retry_rule(on, attempts=2, per_try_ms=0, timeout_ms=0):
    retries = {"attempts": attempts, "on": on}
    if per_try_ms:
        retries["perTryTimeoutMs"] = per_try_ms
    rule = {"retries": retries}
    if timeout_ms:
        rule["timeoutMs"] = timeout_ms
    return routes(rule)


def test_post_is_not_retried_on_reset_unless_marked_safe():
    def handler(ctx, req, body):
        return RESET if len(ctx.server.requests) == 1 else ok(body)

    async def main():
        policy = ServicePolicy(routes=retry_rule(["reset", "5xx"]))
        servers, ups, proxy, client = await setup([handler], policy=policy)
        resp, body, _ = await client.request(method=b"POST", body=b"pay")
        assert resp.status == 502 and resp.get(b"x-glasswing-reason") == b"upstream_reset"
        assert len(servers[0].requests) == 1 and proxy.metrics["retries"] == 0
        await proxy.stop()

        servers, ups, proxy, client = await setup(
            [handler], policy=ServicePolicy(routes=retry_rule(["reset"]), safe_methods=frozenset({b"POST"})))
        resp, body, _ = await client.request(method=b"POST", body=b"pay")
        assert resp.status == 200 and body == b"pay" and resp.get(b"x-glasswing-retries") == b"1"
        assert [b for _r, b in servers[0].requests] == [b"pay", b"pay"]
        await proxy.stop()
    run(main())


@pytest.mark.parametrize("code", [503, 502])
def test_5xx_then_success_is_retried(code):
    def handler(ctx, req, body):
        return status(code) if len(ctx.server.requests) == 1 else ok(b"fine")

    async def main():
        servers, ups, proxy, client = await setup([handler], policy=ServicePolicy(routes=retry_rule([str(code)])))
        resp, body, _ = await client.request()
        assert resp.status == 200 and body == b"fine"
        assert resp.get(b"x-glasswing-retries") == b"1"
        assert proxy.metrics["retries"] == 1 and len(servers[0].requests) == 2
        await proxy.stop()
    run(main())


def test_retry_goes_to_another_endpoint_after_connect_failure():
    async def main():
        server = await Server(name="up").start()
        ups = FakeUpstreams({"down": (closed_port(), {}), "up": (server.addr, {})})
        proxy = await Proxy(ups).start()  # no Route: DEFAULT_RULE retries connect failures
        client = await Client(proxy.addr).open()
        for _ in range(4):
            resp, body, _ = await client.request()
            assert resp.status == 200 and body == b"up"
        assert ups.connects["down"] >= 1
        assert proxy.metrics["upstream_connect_failure"] >= 1
        await proxy.stop()
    run(main())


def test_every_endpoint_refusing_gives_503_connect_error():
    async def main():
        ups = FakeUpstreams({"down": (closed_port(), {})})
        proxy = await Proxy(ups).start()
        client = await Client(proxy.addr).open()
        resp, body, _ = await client.request()
        assert resp.status == 503 and resp.get(b"x-glasswing-reason") == b"upstream_connect_error"
        assert ups.connects["down"] == 3  # the first try and DEFAULT_RULE's two retries
        await proxy.stop()
    run(main())


def test_retry_budget_exhausted_passes_the_original_error_through():
    def handler(ctx, req, body):
        return status(503, b"upstream says no")

    async def main():
        budget = RetryBudget(clock=lambda: 0.0, ratio=0.0, min_per_second=0.1, ttl=10.0)  # 1 retry
        policy = ServicePolicy(routes=retry_rule(["503"], attempts=3), retry_budget=budget)
        servers, ups, proxy, client = await setup([handler], policy=policy)
        resp, body, _ = await client.request()  # one retry from the budget, then the 503 itself
        assert resp.status == 503 and body == b"upstream says no"
        assert resp.get(b"x-glasswing-retries") == b"1"
        resp, body, _ = await client.request()
        assert resp.status == 503 and body == b"upstream says no"
        assert resp.get(b"x-glasswing-retries") is None
        assert len(servers[0].requests) == 3
        assert proxy.metrics["retries"] == 1 and proxy.metrics["retry_budget_exhausted"] == 2
        await proxy.stop()
    run(main())


def test_per_try_timeout_then_retry_succeeds():
    release = asyncio.Event()

    async def handler(ctx, req, body):
        if len(ctx.server.requests) == 1:
            await release.wait()  # until the client has its answer: no answer ends this try
        return ok(b"second")

    async def main():
        policy = ServicePolicy(routes=retry_rule(["5xx"], per_try_ms=200))
        servers, ups, proxy, client = await setup([handler], policy=policy)
        resp, body, _ = await client.request()  # the first try still hangs: only its timeout ends it
        assert resp.status == 200 and body == b"second"
        assert proxy.metrics["retries"] == 1 and proxy.metrics["upstream_timeout"] == 1
        release.set()
        await proxy.stop()
    run(main())


def test_route_timeout_gives_504():
    release = asyncio.Event()

    async def handler(ctx, req, body):
        await release.wait()  # never before the client has its answer: only the timeout gives one
        return ok()

    async def main():
        servers, ups, proxy, client = await setup(
            [handler], policy=ServicePolicy(routes=routes({"timeoutMs": 300})))
        resp, body, _ = await ends_after(client.request(), 0.25)  # not before the 300 ms timeout
        assert resp.status == 504 and resp.get(b"x-glasswing-reason") == hr.REQUEST_TIMEOUT.encode()
        resp, body, _ = await client.request()  # the client connection is still good
        assert resp.status == 504
        release.set()
        await proxy.stop()
    run(main())


def test_large_post_body_is_streamed_and_not_retried():
    def handler(ctx, req, body):
        return status(503) if len(ctx.server.requests) == 1 else ok(hashlib.sha256(body).hexdigest().encode())

    async def main():
        policy = ServicePolicy(routes=retry_rule(["503"]), safe_methods=frozenset({b"POST"}))
        servers, ups, proxy, client = await setup(
            [handler], policy=policy, settings=HttpSettings(replay_limit=1024))
        small = b"x" * 1000
        resp, body, _ = await client.request(method=b"POST", body=small)
        assert resp.status == 200 and body == hashlib.sha256(small).hexdigest().encode()
        big = random.Random(1).randbytes(300_000)
        servers[0].requests.clear()
        resp, body, _ = await client.request(method=b"POST", body=big)
        assert resp.status == 503  # no copy to replay: passed through
        assert servers[0].requests[0][1] == big
        await proxy.stop()
    run(main())


# --- routing ---------------------------------------------------------------------------------


def test_weighted_split_90_10():
    async def main():
        table = routes({"split": [{"subset": {"v": "1"}, "weight": 90}, {"subset": {"v": "2"}, "weight": 10}]})
        servers, ups, proxy, client = await setup(
            [None, None], labels=[{"v": "1"}, {"v": "2"}], policy=ServicePolicy(routes=table),
            rng=random.Random(42))
        n = 2000
        batch = 50
        got = {b"s0": 0, b"s1": 0}
        for _ in range(n // batch):  # pipelined batches keep it quick
            await client.send(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n" * batch)
            for _ in range(batch):
                _resp, body, _ = await client.response()
                got[body] += 1
        assert abs(got[b"s0"] / n - 0.9) <= 0.03 and got[b"s0"] + got[b"s1"] == n
        assert servers[0].connections == 1 and servers[1].connections == 1
        await proxy.stop()
    run(main())


def test_header_match_routing_and_no_route_404():
    async def main():
        table = routes({"match": {"headers": {"x-canary": "yes"}}, "split": [{"subset": {"v": "2"}, "weight": 100}]},
                       {"match": {"pathPrefix": "/api"}, "split": [{"subset": {"v": "1"}, "weight": 100}]})
        servers, ups, proxy, client = await setup(
            [None, None], labels=[{"v": "1"}, {"v": "2"}], policy=ServicePolicy(routes=table))
        assert (await client.request(b"/api/x"))[1] == b"s0"
        assert (await client.request(b"/api/x", headers=((b"X-Canary", b"yes"),)))[1] == b"s1"
        resp, body, _ = await client.request(b"/other")
        assert resp.status == 404 and resp.get(b"x-glasswing-reason") == b"no_route"
        assert (await client.request(b"/api/y"))[1] == b"s0"  # still open after the 404
        await proxy.stop()
    run(main())


def test_set_headers_and_trace_headers():
    def handler(ctx, req, body):
        return ok()

    async def main():
        table = routes({"setHeaders": {"x-env": "prod", "x-old": "new"}})
        servers, ups, proxy, client = await setup([handler], policy=ServicePolicy(routes=table),
                                                  rng=random.Random(3))
        await client.request(headers=((b"X-Old", b"old"),))
        req = servers[0].requests[-1][0]
        assert req.get(b"x-env") == b"prod" and req.get_all(b"x-old") == [b"new"]
        tp = req.get(b"traceparent")
        assert tp is not None and len(tp) == 55 and tp.startswith(b"00-")
        assert len(req.get(b"x-request-id")) == 36
        mine = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        await client.request(headers=((b"traceparent", mine), (b"x-request-id", b"abc-123"),
                                      (b"tracestate", b"k=v")))
        req = servers[0].requests[-1][0]
        assert req.get(b"traceparent") == mine and req.get(b"x-request-id") == b"abc-123"
        assert req.get(b"tracestate") == b"k=v"
        await proxy.stop()
    run(main())


def test_hop_by_hop_headers_are_not_forwarded():
    def handler(ctx, req, body):
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=5\r\nx-up: 1\r\n\r\nok"

    async def main():
        servers, ups, proxy, client = await setup([handler])
        resp, _b, _ = await client.request(headers=((b"Connection", b"x-secret"), (b"X-Secret", b"1"),
                                                    (b"TE", b"trailers")))
        req = servers[0].requests[-1][0]
        assert req.get(b"x-secret") is None and req.get(b"te") is None and req.get(b"connection") is None
        assert resp.get(b"keep-alive") is None and resp.get(b"x-up") == b"1"
        await proxy.stop()
    run(main())


# --- local replies ---------------------------------------------------------------------------


def test_rate_limit_answers_429_at_the_exact_count():
    async def main():
        bucket = TokenBucket(1, 3, clock=lambda: 0.0)  # a frozen clock: 3 tokens, no refill
        servers, ups, proxy, client = await setup(policy=ServicePolicy(rate_limit=bucket))
        codes = [(await client.request())[0].status for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        assert proxy.metrics["local_rate_limited"] == 2 and len(servers[0].requests) == 3
        await proxy.stop()
    run(main())


def test_fault_abort_and_delay():
    async def main():
        fault = hr.FaultInjection(abort_status=418, abort_percent=100)
        servers, ups, proxy, client = await setup(policy=ServicePolicy(fault=fault))
        resp, body, _ = await client.request()
        assert resp.status == 418 and resp.get(b"x-glasswing-reason") == b"fault_abort"
        assert resp.get(b"x-request-id") and not servers[0].requests
        await proxy.stop()

        fault = hr.FaultInjection(delay_ms=300, delay_percent=100)
        servers, ups, proxy, client = await setup(policy=ServicePolicy(fault=fault))
        resp, body, _ = await ends_after(client.request(), 0.25)  # held for the 300 ms delay
        assert resp.status == 200
        assert proxy.metrics["fault_delays"] == 1
        await proxy.stop()
    run(main())


def test_no_endpoint_gives_503_with_a_clear_body():
    async def main():
        proxy = await Proxy(FakeUpstreams({})).start()
        client = await Client(proxy.addr).open()
        resp, body, _ = await client.request()
        assert resp.status == 503 and body == b"no healthy endpoint for service web\n"
        assert resp.get(b"x-glasswing-reason") == b"no_healthy_endpoint"
        assert (await client.request())[0].status == 503  # kept alive
        await proxy.stop()
    run(main())


def test_bad_upstream_response_gives_502():
    def handler(ctx, req, body):
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"

    async def main():
        servers, ups, proxy, client = await setup([handler])
        resp, body, _ = await client.request()
        assert resp.status == 502 and resp.get(b"x-glasswing-reason") == b"upstream_error"
        await proxy.stop()
    run(main())


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw,code", [
    (b"POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: web\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nhost: web\r\n" + b"x-h: v\r\n" * 10_000, 431),  # never ends
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/2.0\r\nhost: web\r\n\r\n", 505),
    (b"G@T / HTTP/1.1\r\nhost: web\r\n\r\n", 400),
])
def test_bad_requests_get_their_4xx_and_the_connection_closes(raw, code):
    async def main():
        servers, ups, proxy, client = await setup(settings=HttpSettings(linger=0.5))
        other = await Client(proxy.addr).open()
        await client.send(raw)
        resp, body, _ = await client.response()
        assert resp.status == code and resp.get(b"connection") == b"close"
        assert await client.closed()
        assert not servers[0].requests
        assert (await other.request())[0].status == 200  # others are still served
        await proxy.stop()
    run(main())


def test_slow_drip_head_is_closed_after_the_head_deadline():
    async def main():
        loop = asyncio.get_running_loop()
        servers, ups, proxy, client = await setup(settings=HttpSettings(head_timeout=0.3, linger=0.2))
        client.close()
        sock = socket.create_connection(proxy.addr)
        sock.setblocking(False)
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\n")

        async def drip():
            while True:  # one byte at a time, the head never complete
                await loop.sock_sendall(sock, b"x")
                await asyncio.sleep(0.05)  # the input: a client dripping a byte every 50 ms
        dripping = asyncio.ensure_future(drip())
        # the 0.3 s deadline is the whole head's: a drip that keeps bytes coming does not extend it
        answer = await ends_before(loop.sock_recv(sock, 65536), 1.5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        sock.close()
        assert proxy.metrics["local_request_header_timeout"] == 1
        await proxy.stop()
    run(main())


def test_idle_keep_alive_client_is_closed_quietly():
    async def main():
        servers, ups, proxy, client = await setup(settings=HttpSettings(idle_timeout=0.3))
        assert (await client.request())[0].status == 200
        assert await client.reader.read(100) == b""
        assert proxy.metrics["client_idle_closed"] == 1
        await proxy.stop()
    run(main())


# --- streaming, upgrade, long-poll -----------------------------------------------------------


def test_chunked_request_body_is_streamed_byte_identical():
    def handler(ctx, req, body):
        return ok(b"%d" % len(body))

    async def main():
        servers, ups, proxy, client = await setup([handler])
        chunks = [b"5\r\nhello\r\n", b"1a\r\n" + b"z" * 26 + b"\r\n", b"3\r\nabc\r\n", b"0\r\n\r\n"]
        await client.send(b"POST /up HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n")
        for c in chunks:  # each chunk reaches the upstream before the next one is sent
            await client.send(c)
            await wait_until_async(lambda: servers[0].raws and servers[0].raws[0].endswith(c),
                                   what=f"{c!r} at the upstream")
        resp, body, _ = await client.response(b"POST")
        assert resp.status == 200 and body == b"34"
        raw = bytes(servers[0].raws[0])
        assert raw.endswith(b"\r\n\r\n" + b"".join(chunks))
        await proxy.stop()
    run(main())


def test_10mb_response_is_streamed_without_buffering():
    size = 10 * 1024 * 1024
    payload = random.Random(5).randbytes(size)

    async def handler(ctx, req, body):
        ctx.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for i in range(0, size, 1 << 20):
            ctx.writer.write(payload[i:i + (1 << 20)])
            await ctx.writer.drain()

    async def main():
        servers, ups, proxy, client = await setup([handler])
        await client.send(b"GET /big HTTP/1.1\r\nhost: web\r\n\r\n")
        resp, body, _ = await client.response(chunk=1 << 16, pause=0.0005)  # a slowish reader
        assert resp.status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
        session = proxy.sessions[0]
        assert 0 < session.peak_buffered <= 2 * HttpSettings().recv_size
        await proxy.stop()
    run(main())


def test_close_delimited_response_is_rechunked_for_http11_clients():
    async def handler(ctx, req, body):
        ctx.writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart1-")
        await ctx.writer.drain()
        await asyncio.sleep(0.05)  # the input: the body comes in two writes, then the close
        ctx.writer.write(b"part2")
        return CLOSE

    async def main():
        servers, ups, proxy, client = await setup([handler])
        resp, body, _ = await client.request()
        assert body == b"part1-part2" and resp.get(b"transfer-encoding") == b"chunked"
        resp, body, _ = await client.request()  # the client connection survived
        assert body == b"part1-part2"
        assert servers[0].connections == 2
        await proxy.stop()
    run(main())


def test_long_poll_arriving_late_then_streamed_slowly():
    pieces = [b"event: %d\n" % i for i in range(5)]

    async def handler(ctx, req, body):
        await asyncio.sleep(0.5)  # the input: an answer later than the session's timeouts below
        ctx.writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for p in pieces:
            ctx.writer.write(b"%x\r\n%s\r\n" % (len(p), p))
            await ctx.writer.drain()
            await asyncio.sleep(0.1)  # the input: a slow stream
        ctx.writer.write(b"0\r\n\r\n")

    async def main():
        # neither the head deadline nor the idle one applies to an upstream that is slow to answer
        servers, ups, proxy, client = await setup([handler], settings=HttpSettings(head_timeout=0.2,
                                                                                   idle_timeout=0.2))
        resp, body, _ = await client.request(b"/poll")
        assert resp.status == 200 and body == b"".join(pieces)
        await proxy.stop()
    run(main())


def test_upgrade_101_hands_both_sockets_over_and_bytes_flow():
    class EchoServer(Server):
        async def _serve(self, reader, writer):
            self.connections += 1
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                         b"connection: upgrade\r\n\r\nserver-hello|")
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(b"echo:" + data)
                await writer.drain()
            writer.close()

    switched = []
    switched_tasks = []

    async def copy(src, dst):
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(src, 65536):
                await loop.sock_sendall(dst, data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def on_switch(client_sock, upstream_sock, to_upstream, to_client):
        switched.append((to_upstream, to_client))
        loop = asyncio.get_running_loop()

        async def start():
            await loop.sock_sendall(upstream_sock, to_upstream)
            await loop.sock_sendall(client_sock, to_client)
            await asyncio.gather(copy(client_sock, upstream_sock), copy(upstream_sock, client_sock))
            client_sock.close()
            upstream_sock.close()
        switched_tasks.append((asyncio.ensure_future(start()), (client_sock, upstream_sock)))

    async def main():
        server = await EchoServer().start()
        proxy = await Proxy(FakeUpstreams({"e": (server.addr, {})}), on_switch=on_switch).start()
        client = await Client(proxy.addr).open()
        await client.send(b"GET /ws HTTP/1.1\r\nhost: web\r\nconnection: upgrade\r\n"
                          b"upgrade: websocket\r\n\r\nearly-bytes")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ") and b"upgrade: websocket" in head.lower()
        assert await client.reader.readexactly(13) == b"server-hello|"
        assert await client.reader.readexactly(16) == b"echo:early-bytes"
        await client.send(b"ping")
        assert await client.reader.readexactly(9) == b"echo:ping"
        assert switched == [(b"early-bytes", b"server-hello|")]
        assert b"upgrade: websocket" in server.requests[0].lower()
        assert proxy.metrics["switched"] == 1
        client.close()
        await proxy.stop()
        for task, socks in switched_tasks:
            task.cancel()
            for sock in socks:
                sock.close()
    run(main())


def test_upgrade_without_on_switch_is_not_forwarded():
    async def main():
        servers, ups, proxy, client = await setup()
        resp, body, _ = await client.request(headers=((b"Connection", b"upgrade"), (b"Upgrade", b"websocket")))
        assert resp.status == 200
        assert servers[0].requests[0][0].get(b"upgrade") is None
        assert (await client.request())[0].status == 200  # the parser resumed after the upgrade ask
        await proxy.stop()
    run(main())


# --- detection -------------------------------------------------------------------------------


def _detect_pair(send):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    if send:
        b.send(send)
    return a, b


def test_detect_http_and_binary_at_once():
    async def main():
        loop = asyncio.get_running_loop()
        for first, want in ((b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", HTTP),
                            (b"\x16\x03\x01\x02\x00", OPAQUE)):  # a TLS hello
            a, b = _detect_pair(first)
            # the bytes decide: detect never waits for its deadline (here far past the alarm)
            kind, prefix = await ends_before(detect(a, loop, 60.0), 5.0)
            assert kind == want and prefix == first
            a.close(), b.close()
    run(main())


def test_server_first_protocol_is_opaque_after_the_deadline_and_loses_no_bytes():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _detect_pair(b"")
        # nothing comes: detect gives up at its 0.1 s deadline, not before and not much later
        kind, prefix = await ends_before(ends_after(detect(a, loop, 0.1), 0.09), 5.0)
        assert kind == OPAQUE and prefix == b""
        # the forwarder now relays raw: the "server" speaks first, the client answers
        b.send(b"EHLO")  # arrives after detection gave up: still in the socket for the relay
        assert await loop.sock_recv(a, 100) == b"EHLO"
        a.close(), b.close()
        # a client that sent part of a text line before the deadline: prefix kept for to_b
        a, b = _detect_pair(b"SET k")
        kind, prefix = await detect(a, loop, 0.1)
        assert kind == OPAQUE and prefix == b"SET k"
        a.close(), b.close()
    run(main())


# --- clients that leave, pipelining while waiting ---------------------------------------------


def test_client_leaving_a_long_poll_closes_its_upstream_connection():
    after_poll = []

    async def handler(ctx, req, body):
        # hold the poll; the proxy closing our connection shows up as EOF here
        after_poll.append(await ctx.reader.read(100))
        return CLOSE

    async def main():
        servers, ups, proxy, client = await setup([handler])
        await client.send(b"GET /poll HTTP/1.1\r\nhost: web\r\n\r\n")
        await wait_until_async(lambda: servers[0].requests, what="the poll at the upstream")
        client.close()
        await wait_until_async(lambda: after_poll, what="the upstream connection to end")
        assert after_poll == [b""] and proxy.metrics["client_aborted"] == 1
        await proxy.stop()
    run(main())


def test_request_pipelined_while_a_response_is_awaited():
    release = asyncio.Event()
    nxt = b"GET /next HTTP/1.1\r\nhost: web\r\n\r\n"

    async def handler(ctx, req, body):
        if req.target == b"/slow":
            await release.wait()
        return ok(req.target)

    async def main():
        servers, ups, proxy, client = await setup([handler])
        await client.send(b"GET /slow HTTP/1.1\r\nhost: web\r\n\r\n")
        await wait_until_async(lambda: servers[0].requests, what="/slow at the upstream")
        await client.send(nxt)
        # /next waits at the proxy while /slow's response is awaited: the proxy wakes for it
        session_sock = proxy.sessions[0].client.sock
        await wait_until_async(lambda: readable_bytes(session_sock) == len(nxt), what="/next at the proxy")
        release.set()
        assert (await client.response())[1] == b"/slow"
        assert (await client.response())[1] == b"/next"
        assert proxy.metrics.get("client_aborted", 0) == 0
        await proxy.stop()
    run(main())


def test_dead_pooled_connection_is_not_retried_for_post():
    def handler(ctx, req, body):
        return CLOSE if ctx.req_no == 2 else ok()

    async def main():
        servers, ups, proxy, client = await setup([handler])
        assert (await client.request())[0].status == 200
        resp, body, _ = await client.request(method=b"POST", body=b"once")
        assert resp.status == 502 and resp.get(b"x-glasswing-reason") == b"upstream_reset"
        assert proxy.metrics["stale_retries"] == 0 and len(servers[0].requests) == 2
        await proxy.stop()
    run(main())


def test_local_reply_before_a_body_arrived_closes_the_connection():
    async def main():
        bucket = TokenBucket(1, 1, clock=lambda: 0.0)
        bucket.try_take()
        servers, ups, proxy, client = await setup(policy=ServicePolicy(rate_limit=bucket),
                                                  settings=HttpSettings(linger=0.2))
        await client.send(b"POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 100\r\n\r\n0123456789")
        resp, body, _ = await client.response(b"POST")
        assert resp.status == 429 and resp.get(b"connection") == b"close"
        assert await client.closed()
        await proxy.stop()
    run(main())


# --- more edges --------------------------------------------------------------------------------


def test_route_timeout_while_streaming_cuts_the_client_connection():
    async def handler(ctx, req, body):
        ctx.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await ctx.writer.drain()
        await asyncio.sleep(2.0)  # the input: an upstream stalling mid-body past the route's timeout
        return b"defghij"

    async def main():
        servers, ups, proxy, client = await setup(
            [handler], policy=ServicePolicy(routes=routes({"timeoutMs": 300})))
        await client.send(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        got = b""
        try:
            while data := await client.reader.read(100):
                got += data
        except ConnectionError:
            pass
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"abc")  # truncated, then cut
        assert proxy.metrics["upstream_timeout_streaming"] == 1
        await proxy.stop()
    run(main())


def test_upstream_reset_mid_body_resets_the_client():
    release = asyncio.Event()

    async def handler(ctx, req, body):
        ctx.writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await ctx.writer.drain()
        await release.wait()  # until the head and the first bytes reached the client
        return RESET

    async def main():
        servers, ups, proxy, client = await setup([handler])
        await client.send(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        client.parser.receive_data(await client.reader.readuntil(b"partial"))
        release.set()
        with pytest.raises((h.HttpError, ConnectionError)):
            await client.response()  # EOF or reset inside a Content-Length body
        await proxy.stop()
    run(main())


def test_bad_chunk_in_a_streamed_request_body_gets_400():
    async def handler(ctx, req, body):
        return ok()

    async def main():
        servers, ups, proxy, client = await setup([handler], settings=HttpSettings(linger=0.2))
        await client.send(b"POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
        # the bad chunk comes in a body already streaming to the upstream
        await wait_until_async(lambda: servers[0].raws and b"hel" in servers[0].raws[0], what="hel upstream")
        await client.send(b"lo\r\nzz\r\n")  # not a chunk size
        resp, body, _ = await client.response(b"POST")
        assert resp.status == 400 and await client.closed()
        assert proxy.metrics["client_errors"] == 1
        await proxy.stop()
    run(main())


def test_early_hints_pass_through_to_http11_clients_only():
    def handler(ctx, req, body):
        return b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n" + ok()

    async def main():
        servers, ups, proxy, client = await setup([handler])
        resp, body, info = await client.request()
        assert [i.status for i in info] == [103] and info[0].get(b"link") == b"</a.css>"
        assert resp.status == 200 and body == b"ok"
        await client.send(b"GET / HTTP/1.0\r\n\r\n")
        resp, body, info = await client.response()
        assert info == [] and resp.status == 200
        await proxy.stop()
    run(main())


def test_connect_without_on_switch_is_501_and_policy_may_be_a_callable():
    async def main():
        calls = []

        def policy():
            calls.append(1)
            return ServicePolicy()
        servers, ups, proxy, client = await setup(policy=policy)
        await client.send(b"CONNECT db:5432 HTTP/1.1\r\nhost: db:5432\r\n\r\n")
        resp, body, _ = await client.response(b"CONNECT")
        assert resp.status == 501 and await client.closed()
        c2 = await Client(proxy.addr).open()
        assert (await c2.request())[0].status == 200 and len(calls) == 2
        await proxy.stop()
    run(main())


def test_bytes_that_came_with_the_connect_reach_the_response_parser():
    class TunnelUpstreams(FakeUpstreams):
        async def connect(self, key):
            # a tunnel's StreamAccept can arrive together with the first response bytes
            sock = await super().connect(key)
            return sock, b"HTTP/1.1 200 OK\r\ncontent-"

    def handler(ctx, req, body):
        return b"length: 4\r\n\r\nvia!"

    async def main():
        server = await Server(handler).start()
        proxy = await Proxy(TunnelUpstreams({"t": (server.addr, {})})).start()
        client = await Client(proxy.addr).open()
        resp, body, _ = await client.request()
        assert resp.status == 200 and body == b"via!"
        await proxy.stop()
    run(main())


def test_server_first_and_binary_protocols_relay_raw_after_detection():
    # The forwarder relays opaque connections with relay.Relay (to_b=prefix); a plain asyncio
    # copy stands in for it here so that this test does not depend on the relay's internals.
    async def copy(src, dst, first=b""):
        loop = asyncio.get_running_loop()
        try:
            if first:
                await loop.sock_sendall(dst, first)
            while data := await loop.sock_recv(src, 65536):
                await loop.sock_sendall(dst, data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    async def smtp(reader, writer):  # speaks first, like SMTP or PostgreSQL's MySQL cousin
        writer.write(b"220 ready\r\n")
        await writer.drain()
        line = await reader.readline()
        writer.write(b"250 hello " + line)
        await writer.drain()
        while data := await reader.read(100):  # then echo
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        loop = asyncio.get_running_loop()
        srv = await asyncio.start_server(smtp, "127.0.0.1", 0)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        lsock.setblocking(False)
        relays, kinds, socks = [], [], []

        async def accept():
            while True:
                conn, _ = await loop.sock_accept(lsock)
                conn.setblocking(False)
                kind, prefix = await detect(conn, loop, 0.1)
                kinds.append((kind, prefix))
                up = socket.socket()
                up.setblocking(False)
                await loop.sock_connect(up, srv.sockets[0].getsockname())
                socks.extend((conn, up))
                relays.append(asyncio.ensure_future(copy(conn, up, prefix)))
                relays.append(asyncio.ensure_future(copy(up, conn)))
        task = asyncio.ensure_future(accept())
        # server first: the client waits for the banner
        reader, writer = await asyncio.open_connection(*lsock.getsockname())
        assert await reader.readline() == b"220 ready\r\n"
        writer.write(b"EHLO me\r\n")
        assert await reader.readline() == b"250 hello EHLO me\r\n"
        writer.close()
        # client first with bytes that are not HTTP: opaque at once, the prefix is relayed
        reader, writer = await asyncio.open_connection(*lsock.getsockname())
        writer.write(b"\x00\x01hi\r\n")
        assert await reader.readline() == b"220 ready\r\n"
        assert await reader.readline() == b"250 hello \x00\x01hi\r\n"
        writer.close()
        assert kinds == [(OPAQUE, b""), (OPAQUE, b"\x00\x01hi\r\n")]
        task.cancel()
        for r in relays:
            r.cancel()
        for sock in socks:
            sock.close()
        lsock.close()
        srv.close()
    run(main())


def test_early_answer_to_a_large_upload_reaches_the_client():
    class EarlyServer(Server):
        async def _serve(self, reader, writer):
            self.connections += 1
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig")
            await writer.drain()
            writer.close()

    async def main():
        server = await EarlyServer().start()
        proxy = await Proxy(FakeUpstreams({"e": (server.addr, {})})).start()
        client = await Client(proxy.addr).open()
        await client.send(b"POST /up HTTP/1.1\r\nhost: web\r\ncontent-length: 4000000\r\n\r\n")

        async def upload():
            try:
                for _ in range(100):
                    await client.send(b"x" * 40000)
            except ConnectionError:
                pass
        up = asyncio.ensure_future(upload())
        resp, body, _ = await client.response(b"POST")
        assert resp.status == 413 and body == b"big" and resp.get(b"connection") == b"close"
        up.cancel()
        await proxy.stop()
    run(main())
