"""dataplane.relay.relay.Relay over every mover: bytes arrive exactly, half-close works both ways,
back-pressure holds, and idle connections hold no pipe.

Topology: A <-> B and C <-> D are TCP loopback connections; the relay joins B and C inside an
asyncio loop. The test writes into A and D from threads and reads what comes out of the
other end. Movers: splice over each pump twin (Cython and Python) and the plain copy twin.
"""
import asyncio
import fcntl
import hashlib
import select
import socket
import struct
import termios
import threading
import time

import pytest

from dataplane.relay import movers
from dataplane.relay import pipes
from dataplane.relay import pump as chooser
from dataplane.relay import pump_py
from dataplane.relay.poller import Poller
from dataplane.relay.relay import Relay

from tests.support import need
from tests.support.sockets import (chunks_of, crossing, payload, read_all, readable_bytes, relay_pair,
                                   tcp_pair, writer)
from tests.support.wait import TIMEOUT, wait_until, wait_until_async


@pytest.fixture(params=["splice-cython", "splice-python", "copy-cython", "copy-python",
                        "auto-cython", "auto-python"])
def mode(request, monkeypatch):
    mode, twin = request.param.split("-")
    twin = need.twin(chooser.twins(), twin, "pump")
    monkeypatch.setattr(movers._pump, "pump", twin.pump)
    monkeypatch.setattr(movers._pump, "copy", twin.copy)
    return mode


@pytest.fixture
def pool(monkeypatch):
    p = pipes.PipePool()
    monkeypatch.setattr(movers, "POOL", p)
    yield p
    p.close()


async def run_relay(mode, b, c, **kw):
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    poller = Poller(loop)
    done.add_done_callback(lambda _f: poller.close())
    r = Relay(poller, b, c, mode=mode,
              on_close=lambda r: done.done() or done.set_result(r), **kw)
    r.start()
    return r, done


@pytest.mark.parametrize("size_ab,size_dc", [(0, 0), (1, 0), (0, 5), (3_000_000, 17),
                                             (123_457, 2_500_001)])
def test_bytes_arrive_exactly_both_ways_with_half_close(mode, pool, size_ab, size_dc):
    a, b, c, d = relay_pair()
    ab, dc = payload(1, size_ab), payload(2, size_dc)

    async def main():
        r, done = await run_relay(mode, b, c)
        threads, got = crossing(a, d, ab, dc)
        for t in threads:
            t.start()
        await asyncio.wait_for(done, TIMEOUT)
        for t in threads:
            await asyncio.to_thread(t.join, TIMEOUT)
        return r, got

    try:
        r, got = asyncio.run(main())
    finally:
        for s in (a, b, c, d):
            s.close()
    assert hashlib.sha256(got["ab"]).digest() == hashlib.sha256(ab).digest() and len(got["ab"]) == size_ab
    assert got["dc"] == dc
    assert r.bytes == (size_ab, size_dc) and r.error is None
    assert pool.lent == 0


def test_one_side_closed_first_the_other_keeps_sending(mode, pool):
    """A half-closes at once; D then streams 1 MB back, which must all reach A."""
    a, b, c, d = relay_pair()
    back = payload(5, 1_000_000)

    async def main():
        r, done = await run_relay(mode, b, c, to_b=b"preamble-leftover")
        a.shutdown(socket.SHUT_WR)
        first = await asyncio.to_thread(read_all, d)
        await asyncio.to_thread(writer, d, chunks_of(back, 6))
        got = await asyncio.to_thread(read_all, a)
        await asyncio.wait_for(done, TIMEOUT)
        return first, got

    try:
        first, got = asyncio.run(main())
    finally:
        for s in (a, b, c, d):
            s.close()
    assert first == b"preamble-leftover"
    assert got == back


def test_idle_connections_hold_no_pipe_and_a_stalled_reader_bounds_the_relay(mode, pool):
    """While D does not read, the relay stops reading A (it holds at most one pipe or one
    copy buffer per direction), so A's writes block; after D drains, nothing is lent."""
    a, b, c, d = relay_pair()
    a.setblocking(False)

    async def main():
        r, done = await run_relay(mode, b, c)
        await asyncio.sleep(0.05)  # the input: 50 ms idle, and an idle relay takes no pipe
        idle_lent = pool.lent
        sent, seen, chunk = 0, [], b"x" * 65536

        def writer_blocked():  # A sends until it blocks; the relay runs between polls
            nonlocal sent
            try:
                while sent < 2000 * 65536:  # far beyond every buffer on the way: must block
                    sent += a.send(chunk)
            except BlockingIOError:
                pass
            seen.append(sent)
            return len(seen) > 1 and seen[-1] == seen[-2]

        await wait_until_async(writer_blocked, what="A blocked for good", interval=0.05)
        stalled_pending = r.dirs[0].mover.pending
        a.setblocking(True)
        a.shutdown(socket.SHUT_WR)
        got = await asyncio.to_thread(read_all, d)
        d.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(done, TIMEOUT)
        return idle_lent, sent, stalled_pending, len(got)

    try:
        idle_lent, sent, stalled_pending, received = asyncio.run(main())
    finally:
        for s in (a, b, c, d):
            s.close()
    assert idle_lent == 0
    assert sent < 2000 * 65536  # the writer blocked: back-pressure reached it
    assert stalled_pending <= max(chooser.PIPE_SIZE, pump_py.COPY_CHUNK)
    assert received == sent
    assert pool.lent == 0


def test_reset_on_one_side_resets_the_other(mode, pool):
    a, b, c, d = relay_pair()

    async def main():
        r, done = await run_relay(mode, b, c)
        a.sendall(b"hello")
        assert await asyncio.to_thread(d.recv, 5) == b"hello"
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        a.close()  # RST
        await asyncio.wait_for(done, TIMEOUT)
        return r

    try:
        r = asyncio.run(main())
        with pytest.raises(ConnectionResetError):
            d.recv(10)
    finally:
        for s in (b, c, d):
            s.close()
    assert isinstance(r.error, ConnectionResetError)
    assert pool.lent == 0


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="relay mode"):
        movers.make("sockmap-typo")


def test_peer_gone_while_the_other_side_is_blocked_loses_nothing(mode, pool):
    """C's peer D sends 8 MB, shuts down and closes while A is not reading: the relay has
    shut down C's write side already (A half-closed first), so C is reported HUP the whole
    time the b->a direction waits for A. That must not end the stream: A gets every byte."""
    a, b, c, d = relay_pair()
    back = payload(7, 8_000_000)

    async def main():
        r, done = await run_relay(mode, b, c)
        a.shutdown(socket.SHUT_WR)
        assert await asyncio.to_thread(read_all, d) == b""
        # D writes everything and closes. The socket buffers and the pipe usually hold all
        # 8 MB, so D is gone before A reads; when autotuning left them smaller, D would wait
        # for A for ever, so A starts reading once nothing moves any more.
        t = threading.Thread(target=lambda: (writer(d, [back]), d.close()))
        t.start()
        seen = []

        def d_gone_or_all_full():
            seen.append(readable_bytes(a))
            return not t.is_alive() or seen[-3:] == [seen[-1]] * 3

        await wait_until_async(d_gone_or_all_full, what="D gone, or every buffer up to A full",
                               interval=0.1)
        await asyncio.sleep(0.3)  # A still not reading: the relay sits blocked on it
        got = await asyncio.to_thread(read_all, a)
        await asyncio.to_thread(t.join, TIMEOUT)
        await asyncio.wait_for(done, TIMEOUT)
        return r, got

    try:
        r, got = asyncio.run(main())
    finally:
        for s in (a, b, c):
            s.close()
    assert r.error is None and len(got) == len(back) and got == back


def test_a_pipe_that_failed_mid_transfer_never_reaches_another_connection(pool):
    """The splice pump reads src into the pipe, then fails on dst: bytes sit in the pipe that
    the mover's count does not know. The pipe must be closed, not lent again, or the next
    connection would send them (iperf3 data sockets end with a reset; the next control
    connection once received their leftovers as "an unknown control message")."""
    a, b = tcp_pair()
    c, d = tcp_pair()
    try:
        for s in (b, c):
            s.setblocking(False)
        d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        c.sendall(b"unread")  # d closes with unread bytes: a reset
        d.close()
        wait_until(lambda: c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or select.select([c], [], [], 0)[0],
                   what="the reset at c")
        a.sendall(b"stale" * 1000)
        select.select([b], [], [], TIMEOUT)
        m = movers.SpliceMover()
        with pytest.raises(OSError):
            m.step(b.fileno(), c.fileno(), 1 << 20)
        m.discard()  # what Relay.abort does next
        assert pool.lent == 0
        for r, _w in pool.idle:  # whatever the pool keeps must be empty
            assert struct.unpack("i", fcntl.ioctl(r, termios.FIONREAD, b"\0" * 4))[0] == 0
    finally:
        for s in (a, b, c):
            s.close()


def test_auto_copies_small_messages_and_splices_bulk(pool):
    """A direction that only ever moves small messages stays on copy (no pipe ever lent);
    the first readiness with 64 KiB or more moves it to splice, and every byte still arrives."""
    a, b = tcp_pair()
    c, d = tcp_pair()
    try:
        for s in (b, c):
            s.setblocking(False)
        m = movers.AutoMover()
        a.sendall(b"small")
        select.select([b], [], [], TIMEOUT)
        assert m.step(b.fileno(), c.fileno(), 1 << 20)[0] == 5 and not m.spliced and pool.lent == 0
        assert d.recv(16) == b"small"
        big = payload(8, 1 << 20)
        threading.Thread(target=a.sendall, args=(big,), daemon=True).start()
        # The first readiness must see bulk: a loop faster than the writer could otherwise
        # take each 64 KiB loopback segment (65483 bytes, just under BULK) on its own.
        wait_until(lambda: readable_bytes(b) >= movers.AutoMover.BULK, what="bulk queued at b")
        got = bytearray()
        deadline = time.monotonic() + TIMEOUT
        while len(got) < len(big):
            assert time.monotonic() < deadline
            select.select([b], [c], [], 0.05)
            try:
                m.step(b.fileno(), c.fileno(), 1 << 20)
            except BlockingIOError:
                pass
            d.setblocking(False)
            try:
                while True:
                    got += d.recv(1 << 20)
            except BlockingIOError:
                pass
        assert m.spliced and bytes(got) == big
        m.discard()
    finally:
        for s in (a, b, c, d):
            s.close()
