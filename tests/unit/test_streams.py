"""The per-connection waits without a Task: sockets.connect (done at once when the handshake
finished inside connect(2), else a future and a timer) and streams.read_preamble (what is
already there at once, the rest when it comes, TimeoutError or ConnectionError otherwise).
Loopback only."""
import asyncio
import random
import socket

import pytest

from dataplane.host import sockets
from dataplane.tunnel import codec as tc
from dataplane.host.sockets import connect
from dataplane.tunnel.streams import read_preamble
from dataplane.http.trace_context import new_trace_id

from tests.support.wait import ends_after, wait_until

ACCEPT = tc.encode_accept(tc.Accept(version=tc.VERSION, trace_id="ab" * 16))


def listening(backlog=16):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(backlog)
    return ls


def nonblocking():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    return s


def test_connect_to_a_local_listener_needs_no_wait(monkeypatch):
    ls = listening()
    s = nonblocking()

    async def never(*a):
        raise AssertionError("waited for a handshake that had finished")

    monkeypatch.setattr(sockets, "ready", never)
    try:
        asyncio.run(connect(s, ls.getsockname(), 1.0))
        assert s.getpeername() == ls.getsockname()
    finally:
        s.close()
        ls.close()


def test_connect_to_a_full_backlog_times_out():
    """A listener that never accepts and whose queue is full drops SYNs: the wait ends
    with TimeoutError after the timeout, not before (a timer set just short of it on the
    same loop clock fires first, whatever the load)."""
    ls = listening(0)
    held = []
    try:
        for _ in range(4):  # fill the accept queue (backlog 0 still takes one)
            c = nonblocking()
            c.connect_ex(ls.getsockname())
            held.append(c)
        wait_until(lambda: established(held[0]), what="the first connection in the accept queue")
        s = nonblocking()
        held.append(s)
        with pytest.raises(TimeoutError, match="no answer within 0.3s"):
            asyncio.run(ends_after(connect(s, ls.getsockname(), 0.3), 0.25))
    finally:
        for c in held:
            c.close()
        ls.close()


def established(s) -> bool:
    try:
        s.getpeername()
    except OSError:
        return False
    return True


def preamble_pair():
    a, b = socket.socketpair()
    b.setblocking(False)
    return a, b


def test_preamble_already_there_is_read_at_once():
    a, b = preamble_pair()
    try:
        a.sendall(ACCEPT + b"app bytes")
        reader = tc.PreambleReader("reply")
        ev = asyncio.run(read_preamble(b, reader, timeout=1))
        assert isinstance(ev, tc.Accept) and reader.leftover == b"app bytes"
    finally:
        a.close()
        b.close()


def test_preamble_arriving_in_pieces_later():
    a, b = preamble_pair()

    async def main():
        loop = asyncio.get_running_loop()
        for i, byte in enumerate(ACCEPT):
            loop.call_later(0.01 * (i + 1), a.send, bytes([byte]))
        return await read_preamble(b, tc.PreambleReader("reply"), timeout=5)

    try:
        assert isinstance(asyncio.run(main()), tc.Accept)
    finally:
        a.close()
        b.close()


def test_preamble_that_never_completes_times_out():
    a, b = preamble_pair()
    try:
        a.sendall(ACCEPT[:3])
        with pytest.raises(TimeoutError):
            asyncio.run(ends_after(read_preamble(b, tc.PreambleReader("reply"), timeout=0.2), 0.15))
    finally:
        a.close()
        b.close()


def test_peer_closing_during_the_preamble():
    a, b = preamble_pair()
    a.sendall(ACCEPT[:3])
    a.close()
    try:
        with pytest.raises(ConnectionError, match="during the preamble"):
            asyncio.run(read_preamble(b, tc.PreambleReader("reply"), timeout=1))
    finally:
        b.close()


class ZeroRandom(random.Random):
    def getrandbits(self, k):
        return 0


def test_trace_ids_are_32_hex_digits_never_zero():
    ids = {new_trace_id(random.Random(7)) for _ in range(3)}
    assert len(ids) == 1  # seeded: reproducible
    rng = random.Random()
    for _ in range(100):
        t = new_trace_id(rng)
        assert len(t) == 32 and int(t, 16) and t == t.lower()
    assert new_trace_id(ZeroRandom()) == "0" * 31 + "1"
