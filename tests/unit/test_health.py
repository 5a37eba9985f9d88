"""Health thresholds (no I/O) and the probes against real loopback servers."""
import asyncio
import socket

import pytest

from dataplane.policy.health import HealthState, probe


def test_thresholds():
    h = HealthState(healthy_threshold=2, unhealthy_threshold=3)
    assert h.status == "unknown"
    assert [h.record(False) for _ in range(3)] == [False, False, True] and h.status == "unhealthy"
    assert h.record(True) is False and h.status == "unhealthy"  # one success is not enough
    assert h.record(True) is True and h.status == "healthy"
    assert h.record(False) is False and h.record(True) is False  # a blip resets the run
    assert [h.record(False) for _ in range(3)] == [False, False, True]


def _server(reply: bytes):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)

    async def serve():
        loop = asyncio.get_running_loop()
        while True:
            c, _ = await loop.sock_accept(srv)
            c.setblocking(False)
            await loop.sock_recv(c, 4096)
            if reply:
                await loop.sock_sendall(c, reply)
            c.close()
    return srv, serve


def _connector(port):
    async def connect():
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
        except OSError:
            s.close()
            raise
        return s
    return connect


@pytest.mark.parametrize("reply,ok", [(b"HTTP/1.1 200 OK\r\n\r\n", True), (b"HTTP/1.1 302 Found\r\n\r\n", True),
                                      (b"HTTP/1.1 503 Unavailable\r\n\r\n", False), (b"garbage", False),
                                      (b"", False)])
def test_http_probe(reply, ok):
    async def main():
        srv, serve = _server(reply)
        task = asyncio.ensure_future(serve())
        try:
            return await probe(_connector(srv.getsockname()[1]),
                               {"type": "http", "path": "/healthz", "timeout_ms": 500}, "x")
        finally:
            task.cancel()
            srv.close()
    assert asyncio.run(main()) is ok


def test_tcp_probe_up_and_down():
    async def main():
        srv, serve = _server(b"")
        port = srv.getsockname()[1]
        task = asyncio.ensure_future(serve())
        up = await probe(_connector(port), {"type": "tcp", "timeout_ms": 500}, "x")
        task.cancel()
        srv.close()
        down = await probe(_connector(port), {"type": "tcp", "timeout_ms": 500}, "x")
        return up, down
    assert asyncio.run(main()) == (True, False)
