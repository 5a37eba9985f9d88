"""dataplane.http.pool.UpstreamPool over socketpairs: LIFO reuse, limits, idle expiry, and
connections the peer closes while idle leave the pool by themselves."""
import asyncio
import socket

from dataplane.http.pool import PooledConn, UpstreamPool

from tests.support.wait import wait_until_async


_PEERS = []


def run(coro):
    try:
        return asyncio.run(asyncio.wait_for(coro, 10))
    finally:
        while _PEERS:
            _PEERS.pop().close()


def conn(key="a"):
    a, b = socket.socketpair()
    a.setblocking(False)
    c = PooledConn(key, a)
    c.uses = 1
    _PEERS.append(b)
    return c, b


def test_take_returns_the_newest_and_counts_uses():
    async def main():
        pool = UpstreamPool(asyncio.get_running_loop())
        c1, c2 = conn()[0], conn()[0]
        assert pool.take("a") is None
        assert pool.put(c1) and pool.put(c2)
        assert pool.idle("a") == 2 and pool.idle() == 2
        got = pool.take("a")
        assert got is c2 and got.reused and got.uses == 2
        assert pool.take("b") is None
        assert pool.take("a") is c1 and pool.take("a") is None
        assert pool.idle() == 0
        c1.close(), c2.close()
        pool.close()
    run(main())


def test_max_idle_per_key_closes_the_oldest():
    async def main():
        pool = UpstreamPool(asyncio.get_running_loop(), max_idle_per_key=2)
        conns = [conn() for _ in range(3)]
        for c, _p in conns:
            pool.put(c)
        assert pool.idle("a") == 2
        assert conns[0][0].sock.fileno() == -1  # the oldest was closed
        assert pool.stats["over_limit"] == 1
        pool.close()
        assert all(c.sock.fileno() == -1 for c, _p in conns)
    run(main())


def test_idle_timeout_closes():
    async def main():
        pool = UpstreamPool(asyncio.get_running_loop(), idle_timeout=0.1)
        c, _p = conn()
        pool.put(c)
        await wait_until_async(lambda: pool.idle() == 0, what="the idle connection to expire")
        assert c.sock.fileno() == -1 and pool.stats["closed_idle"] == 1
    run(main())


def test_peer_close_or_stray_bytes_remove_an_idle_connection():
    async def main():
        pool = UpstreamPool(asyncio.get_running_loop())
        c1, p1 = conn()
        c2, p2 = conn()
        pool.put(c1)
        pool.put(c2)
        p1.close()  # the upstream's idle close
        p2.send(b"HTTP/1.1 200 OK\r\n")  # bytes nobody asked for
        await wait_until_async(lambda: pool.idle() == 0, what="both connections to leave the pool")
        assert pool.stats["closed_by_peer"] == 2
        assert c1.sock.fileno() == -1 and c2.sock.fileno() == -1
    run(main())


def test_a_taken_connection_is_no_longer_watched():
    async def main():
        pool = UpstreamPool(asyncio.get_running_loop(), idle_timeout=0.1)
        c, p = conn()
        pool.put(c)
        assert pool.take("a") is c
        p.send(b"response bytes")
        await asyncio.sleep(0.2)  # the input: twice the idle timeout, with bytes waiting
        assert c.sock.fileno() >= 0  # neither the reader nor the timer touched it
        assert c.sock.recv(100) == b"response bytes"
        c.close()
    run(main())


def test_unclean_connections_are_not_pooled():
    async def main():
        pool = UpstreamPool(asyncio.get_running_loop())
        c, _p = conn()
        c.parser.receive_data(b"HTTP/1.1 200 OK\r\n")  # leftover bytes: framing unknown
        assert not pool.put(c) and c.sock.fileno() == -1
        c2, _p2 = conn()
        c2.close()
        assert not pool.put(c2)
        assert pool.idle() == 0
    run(main())


def test_clear_one_endpoint():
    async def main():
        pool = UpstreamPool(asyncio.get_running_loop())
        a, _pa = conn("a")
        b, _pb = conn("b")
        pool.put(a)
        pool.put(b)
        pool.clear("a")
        assert pool.idle("a") == 0 and pool.idle("b") == 1 and a.sock.fileno() == -1
        pool.close()
        assert b.sock.fileno() == -1
    run(main())
