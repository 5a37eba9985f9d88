"""The relay engine, both twins (C: dataplane.relay._engine_c, Python: dataplane.relay.engine_py), in
each mode: bytes arrive exactly both ways with half-close, read-ahead goes first, resets
and clean closes on request, failures reset the other side, back-pressure holds, stop and
bad input lose nothing (every fd handed over is closed), ids are reused only after done().

Topology as in test_relay.py: A <-> B and C <-> D are TCP loopback connections; the engine
joins B and C. The test writes into A and D from threads and reads the other end.
"""
import asyncio
import errno
import os
import socket
import threading

import pytest

from dataplane.relay import engine as chooser
from dataplane.relay.engine_relays import EngineRelays

from tests.support import need
from tests.support.engine import carries_exactly, counted, hand_over, wait_done
from tests.support.sockets import payload, read_all, relay_pair, writer
from tests.support.wait import TIMEOUT, wait_until


@pytest.fixture(params=["c", "python"])
def twin(request):
    return need.twin(chooser.twins(), request.param, "relay engine")


@pytest.fixture
def engine(twin):
    e = twin()
    yield e
    e.close()


def is_closed(fd):
    try:
        os.fstat(fd)
    except OSError as x:
        return x.errno == errno.EBADF
    return False


@pytest.mark.parametrize("mode", ["auto", "splice", "copy", "kernel"])  # kernel: as auto without kernel()
@pytest.mark.parametrize("size_ab,size_dc", [(0, 0), (1, 0), (0, 5), (3_000_000, 17),
                                             (123_457, 2_500_001)])
def test_bytes_arrive_exactly_both_ways_with_half_close(engine, mode, size_ab, size_dc):
    cid = carries_exactly(engine, mode, size_ab, size_dc)
    assert len(engine) == 0 and engine.bytes(cid) is None


@pytest.mark.parametrize("mode", ["auto", "splice", "copy"])
def test_read_ahead_goes_first_and_one_side_may_close_first(engine, mode):
    a, b, c, d = relay_pair()
    back = payload(5, 1_000_000)
    cid = hand_over(engine, b, c, to_b=b"preamble-leftover", to_a=b"hello ", mode=mode)
    a.shutdown(socket.SHUT_WR)
    assert read_all(d) == b"preamble-leftover"  # then EOF: A's half-close came through
    t = threading.Thread(target=writer, args=(d, [back]))
    t.start()
    assert read_all(a) == b"hello " + back
    t.join()
    assert wait_done(engine) == [(cid, 0, 17, 6 + len(back))]


@pytest.mark.parametrize("request_", ["abort", "close_conn"])
def test_ends_on_request_reset_or_clean(engine, request_):
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c)
    a.sendall(b"x" * 1000)
    assert d.recv(2000) == b"x" * 1000
    assert counted(engine, cid, (1000, 0))
    assert getattr(engine, request_)(cid)
    (ended,) = wait_done(engine)
    if request_ == "abort":
        assert ended == (cid, errno.ECONNABORTED, 1000, 0)
        for s in (a, d):
            with pytest.raises(ConnectionResetError):
                s.recv(10)
    else:
        assert ended == (cid, 0, 1000, 0)
        assert a.recv(10) == b"" and d.recv(10) == b""
    assert not engine.abort(cid) and not engine.close_conn(cid)  # no longer open


def test_a_reset_on_one_side_resets_the_other(engine):
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    a.close()
    (ended,) = wait_done(engine)
    assert ended[0] == cid and ended[1] == errno.ECONNRESET
    with pytest.raises(ConnectionResetError):
        d.recv(10)


def test_stalled_reader_bounds_what_is_taken_from_the_writer(engine):
    """D never reads: the engine stops reading B once C is full, so A's writes block and
    what A could offer stays bounded by the buffers on the way (A's, B's, one pipe in the
    engine), not by what A would write. Autotuning may grow the buffers for a while, so the
    test waits until nothing moves any more and bounds B and C by autotuning's ceilings."""
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c)  # b and c now belong to the engine
    a.setblocking(False)
    chunk = b"z" * 65536
    offered, seen = 0, []

    def nothing_moves():
        """A sends until it blocks; true once two polls in a row see the same counts."""
        nonlocal offered
        try:
            while offered < 1 << 30:
                offered += a.send(chunk)
        except BlockingIOError:
            pass
        seen.append((offered, engine.bytes(cid)[0]))
        return len(seen) > 1 and seen[-1] == seen[-2]

    wait_until(nothing_moves, what="the writer held back with nothing moving", interval=0.05)
    moved = engine.bytes(cid)[0]
    slack = 1 << 20  # the engine's pipe, and a segment past a full buffer
    assert moved <= TCP_WMEM_MAX + d.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) + slack
    assert offered - moved <= a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + TCP_RMEM_MAX + slack
    engine.abort(cid)
    wait_done(engine)


def _tcp_mem_max(name) -> int:
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


TCP_RMEM_MAX, TCP_WMEM_MAX = _tcp_mem_max("tcp_rmem"), _tcp_mem_max("tcp_wmem")


def test_many_connections_at_once(engine):
    n = 200
    conns = [relay_pair() for _ in range(n)]
    ids = [hand_over(engine, b, c) for a, b, c, d in conns]
    assert len(set(ids)) == n and len(engine) == n
    for i, (a, b, c, d) in enumerate(conns):
        a.sendall(f"ping {i}".encode())
    for i, (a, b, c, d) in enumerate(conns):
        assert d.recv(100) == f"ping {i}".encode()
        d.sendall(f"pong {i}".encode())
        assert a.recv(100) == f"pong {i}".encode()
        a.shutdown(socket.SHUT_WR)
        d.shutdown(socket.SHUT_WR)
    ended = wait_done(engine, n)
    assert sorted(x[0] for x in ended) == sorted(ids) and all(x[1] == 0 for x in ended)
    assert len(engine) == 0


def test_stop_resets_what_is_open_and_refuses_more(engine):
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c)
    engine.stop()
    assert engine.done() == [(cid, errno.ECONNABORTED, 0, 0)]
    with pytest.raises(ConnectionResetError):
        a.recv(10)
    _a2, b2, c2, _d2 = relay_pair()
    fds = (b2.detach(), c2.detach())
    with pytest.raises(OSError) as exc:
        engine.add(*fds)
    assert exc.value.errno == errno.ESHUTDOWN
    assert all(is_closed(fd) for fd in fds)  # handed over, so closed even on refusal


def test_past_max_conns_refused_and_ids_reused_after_done(twin):
    e = twin(2)
    try:
        held = [relay_pair() for _ in range(2)]
        ids = [hand_over(e, b, c) for a, b, c, d in held]
        _a, b, c, _d = relay_pair()
        fds = (b.detach(), c.detach())
        with pytest.raises(OSError) as exc:
            e.add(*fds)
        assert exc.value.errno == errno.EMFILE and all(is_closed(fd) for fd in fds)
        assert e.abort(ids[0])
        wait_done(e)
        a, b, c, d = relay_pair()
        assert hand_over(e, b, c) == ids[0]  # free again once done() returned it
        a.sendall(b"again")
        assert d.recv(10) == b"again"
    finally:
        e.close()


def test_bad_mode_refused_and_fds_closed(engine):
    _a, b, c, _d = relay_pair()
    fds = (b.detach(), c.detach())
    with pytest.raises(KeyError):
        engine.add(*fds, mode="sockmap")
    assert all(is_closed(fd) for fd in fds)


def test_engine_relays_report_ends_to_the_loop(twin, monkeypatch):
    """The forwarder's side: on_close once per connection, with the final counts; close()
    (idle timeout) is a clean end, abort() a reset, and closing the owner ends the rest."""
    import dataplane.relay.engine_relays as er
    monkeypatch.setattr(er, "Engine", twin)

    async def main():
        loop = asyncio.get_running_loop()
        owner = EngineRelays(loop)
        ended = asyncio.Queue()
        quads = [relay_pair() for _ in range(3)]
        rs = [owner.relay(b, c, b"", b"", ended.put_nowait, ("svc", i)) for i, (a, b, c, d) in enumerate(quads)]
        a, _b, _c, d = quads[0]
        a.sendall(b"1234")
        assert await loop.run_in_executor(None, d.recv, 10) == b"1234"
        assert await loop.run_in_executor(None, counted, owner.engine, rs[0].id, (4, 0))
        assert rs[0].bytes == (4, 0)
        rs[0].close()
        r = await asyncio.wait_for(ended.get(), TIMEOUT)
        assert r is rs[0] and r.closed and r.error is None and r.bytes == (4, 0)
        rs[1].abort()
        r = await asyncio.wait_for(ended.get(), TIMEOUT)
        assert r is rs[1] and isinstance(r.error, OSError) and r.error.errno == errno.ECONNABORTED
        owner.close()
        assert ended.get_nowait() is rs[2] and rs[2].closed and len(owner) == 0
        for a, _b, _c, d in quads:
            a.close()
            d.close()

    asyncio.run(main())


def test_python_twin_runs_kernel_as_auto():
    """The Python twin has no kernel path: it says so, and carries mode "kernel" as auto."""
    from dataplane.relay import engine_py
    e = engine_py.Engine()
    try:
        assert e.kernel(-1, -1, -1, 4096) is False
        a, b, c, d = relay_pair()
        cid = hand_over(e, b, c, mode="kernel")
        a.sendall(b"x" * 100_000)
        a.shutdown(socket.SHUT_WR)
        assert read_all(d) == b"x" * 100_000
        d.shutdown(socket.SHUT_WR)
        assert read_all(a) == b""
        assert wait_done(e) == [(cid, 0, 100_000, 0)]
    finally:
        e.close()
