"""Tests of the splice byte pump, run over every twin (dataplane.relay._pump_c and dataplane.relay.pump_py).

Topology: A <-> B and C <-> D are TCP loopback connections; the pump relays B -> C, driven by
a small selectors loop (the forwarder does the same with loop.add_reader/add_writer). The test
writes into A and reads from D. No root needed.

With GLASSWING_REQUIRE_ALL=1 a missing Cython twin fails the tests instead of skipping them.
"""

import errno
import fcntl
import os
import random
import select
import selectors
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest

from dataplane.relay import pump as chooser

from tests.support import need
from tests.support.need import REQUIRE_ALL
from tests.support.sockets import readable_bytes, tcp_pair
from tests.support.wait import TIMEOUT, wait_until


@pytest.fixture(params=["cython", "python"])
def twin(request):
    return need.twin(chooser.twins(), request.param, "pump")


# --- sockets ---------------------------------------------------------------------------------

@pytest.fixture
def conns():
    """A, B, C, D with B and C non-blocking (the pump's src and dst)."""
    socks = []

    def make(d_rcvbuf=None, c_sndbuf=None):
        a, b = tcp_pair()
        c, d = tcp_pair(rcvbuf=d_rcvbuf)
        if c_sndbuf:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, c_sndbuf)
        # Test sockets without Nagle so that only the pump can delay small messages (the
        # forwarder is expected to set TCP_NODELAY on its own sockets too).
        for s in (a, c):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        b.setblocking(False)
        c.setblocking(False)
        for s in (a, d):
            s.settimeout(TIMEOUT)
        socks.extend((a, b, c, d))
        return a, b, c, d

    yield make
    for s in socks:
        s.close()


def wait_poll(s, mask, what):
    p = select.poll()
    p.register(s, mask)
    assert p.poll(TIMEOUT * 1000), f"timed out waiting for {what}"


def pipe_capacity(w):
    return fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)


def payload(n, seed=1234):
    return random.Random(seed).randbytes(n)


class Reader(threading.Thread):
    """Reads a blocking socket to EOF in the background."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.chunks, self.eof, self.error = sock, [], False, None

    def run(self):
        try:
            while True:
                b = self.sock.recv(1 << 20)
                if not b:
                    self.eof = True
                    return
                self.chunks.append(b)
        except Exception as e:  # surfaced by data()
            self.error = e

    def data(self):
        self.join(TIMEOUT)
        assert not self.is_alive(), "reader did not see EOF"
        assert self.error is None, self.error
        return b"".join(self.chunks)


# --- the relay loop under test ---------------------------------------------------------------

class Relay:
    """One direction B -> C, driven like the forwarder drives it; checks invariants per call."""

    def __init__(self, mod, src, dst, budget=1 << 20):
        self.mod, self.src, self.dst, self.budget = mod, src, dst, budget
        self.r, self.w = chooser.make_pipe()
        self.cap = pipe_capacity(self.w)
        self.pending = 0
        self.calls = []  # (moved, pending, status)
        self.total = 0

    def close(self):
        chooser.close_pipe(self.r, self.w)

    def step(self, budget=None):
        m = self.mod
        budget = self.budget if budget is None else budget
        before = self.pending
        moved, pending, status = m.pump(self.src.fileno(), self.dst.fileno(), self.r, self.w,
                                        before, budget)
        self.calls.append((moved, pending, status))
        self.total += moved
        self.pending = pending
        # Exactly one status or none; only DST_BLOCKED leaves bytes in the pipe (so SRC_EOF
        # always comes with pending == 0).
        assert status in (0, m.SRC_EOF, m.DST_BLOCKED, m.SRC_DRAINED)
        assert (pending > 0) == (status == m.DST_BLOCKED)
        # The budget bound: bytes read from src in one call = moved + pending - before.
        taken = moved + pending - before
        assert 0 <= taken <= budget
        assert moved <= before + budget
        if status == 0:  # returned because the budget was spent
            assert taken == budget
        assert 0 <= pending <= self.cap
        return moved, pending, status

    def run(self):
        """Pump until SRC_EOF, then shutdown(SHUT_WR) dst, as the forwarder does."""
        m = self.mod
        sel = selectors.DefaultSelector()
        deadline = time.monotonic() + TIMEOUT
        try:
            while True:
                _, _, status = self.step()
                if status == m.SRC_EOF:
                    self.dst.shutdown(socket.SHUT_WR)
                    return
                if status == 0:  # budget spent: come back on the next loop iteration
                    continue
                # DST_BLOCKED: wait for dst writable only (stop polling src);
                # SRC_DRAINED: wait for src readable.
                sock, ev = ((self.dst, selectors.EVENT_WRITE) if status == m.DST_BLOCKED
                            else (self.src, selectors.EVENT_READ))
                sel.register(sock, ev)
                sel.select(timeout=1.0)
                sel.unregister(sock)
                assert time.monotonic() < deadline, "relay did not reach EOF"
        finally:
            sel.close()


# --- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 100, 65535, 65537, 1 << 20, 8 << 20])
def test_payload_arrives_byte_for_byte(twin, conns, size):
    a, b, c, d = conns()
    data = payload(size, seed=size)

    def write():
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    reader = Reader(d)
    writer.start()
    reader.start()
    relay = Relay(twin, b, c)
    try:
        relay.run()
    finally:
        relay.close()
    writer.join(TIMEOUT)
    got = reader.data()
    assert len(got) == size and got == data
    assert relay.total == size


def test_small_budget_relays_everything(twin, conns):
    a, b, c, d = conns()
    data = payload(1 << 20, seed=7)
    writer = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)),
                              daemon=True)
    reader = Reader(d)
    writer.start()
    reader.start()
    relay = Relay(twin, b, c, budget=10_000)  # Relay.step checks the bound on every call
    try:
        relay.run()
    finally:
        relay.close()
    assert reader.data() == data
    assert any(st == 0 for _, _, st in relay.calls), "budget never hit"


def test_small_messages_are_not_held(twin, conns):
    # SPLICE_F_MORE would cork each message (measured ~400 ms): the pump must leave nothing
    # unsent in C's queue once a call has moved a small message (TCP_NODELAY, open window:
    # the kernel sends at once unless corked), and D gets each message whole.
    a, b, c, d = conns()
    relay = Relay(twin, b, c)
    try:
        for i in range(20):
            msg = b"msg-%06d" % i
            a.sendall(msg)
            moved = 0
            while moved < len(msg):
                wait_poll(b, select.POLLIN, f"message {i} at b")
                moved += relay.step()[0]
            assert unsent(c) == 0, f"message {i} held back in C's queue"
            got = b""
            while len(got) < len(msg):
                chunk = d.recv(len(msg) - len(got))
                assert chunk, "unexpected EOF"
                got += chunk
            assert got == msg
        a.shutdown(socket.SHUT_WR)
        relay.run()
        assert d.recv(1) == b""
    finally:
        relay.close()


def unsent(s) -> int:
    """Bytes in s's send queue not yet sent (SIOCOUTQNSD)."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), SIOCOUTQNSD, b"\0\0\0\0"))[0]


def queued(s) -> int:
    """Bytes in s's send queue, sent but not acknowledged or not sent yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


SIOCOUTQNSD = 0x894B


def test_half_close(twin, conns):
    a, b, c, d = conns()
    data = payload(300_000, seed=3)
    a.sendall(data)
    a.shutdown(socket.SHUT_WR)
    reader = Reader(d)
    reader.start()
    relay = Relay(twin, b, c)
    try:
        relay.run()  # stops at SRC_EOF and does c.shutdown(SHUT_WR)
        assert relay.calls[-1] == (relay.calls[-1][0], 0, twin.SRC_EOF)
        assert [st for _, _, st in relay.calls].count(twin.SRC_EOF) == 1
        assert reader.data() == data and reader.eof
        # EOF is sticky: calling again reports it again, moving nothing.
        assert relay.step() == (0, 0, twin.SRC_EOF)
        # The other direction of the half-closed connections still works.
        d.sendall(b"back")
        wait_poll(c, select.POLLIN, "c readable")
        assert c.recv(16) == b"back"
    finally:
        relay.close()


def test_stalled_reader_blocks_dst_and_bounds_pending(twin, conns):
    # D never reads (small buffers so that it fills fast): the pump must report DST_BLOCKED,
    # keep at most one pipe's worth of bytes (Relay.step checks that on every call) and take
    # from src only what dst accepts. The kernel may still accept some after the first
    # DST_BLOCKED (an ACK in flight frees C's buffer, D's window opens), so what holds for
    # any buffer size is: every later call is DST_BLOCKED again, and what moved stays within
    # what C's and D's buffers can hold, far below what A offered.
    a, b, c, d = conns(d_rcvbuf=32 * 1024, c_sndbuf=32 * 1024)
    a.setblocking(False)
    stream = payload(32 << 20, seed=5)
    sent = 0
    relay = Relay(twin, b, c)
    try:
        a_full = blocked = False
        for _ in range(100_000):  # until A's buffers are full too: src always has more
            try:
                sent += a.send(stream[sent:sent + 65536])
            except BlockingIOError:
                a_full = True
            blocked = relay.step()[2] == twin.DST_BLOCKED
            if a_full and blocked:
                break
            assert sent < len(stream), "never blocked"
        else:
            pytest.fail("pump never reported DST_BLOCKED with A's buffers full")
        for _ in range(3):
            assert relay.step()[2] == twin.DST_BLOCKED
        held = (c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                + d.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        assert relay.total <= held + 65536, (relay.total, held)  # + one segment sent past the limit
        assert relay.total + relay.pending < sent

        # A finishes (more data, then FIN, queued behind the full buffers) and D starts
        # reading: everything arrives and SRC_EOF comes last, with the pipe empty.
        a.setblocking(True)
        rest = stream[sent:sent + 100_000]
        writer = threading.Thread(target=lambda: (a.sendall(rest), a.shutdown(socket.SHUT_WR)),
                                  daemon=True)
        writer.start()
        sent += len(rest)
        assert relay.step()[2] == twin.DST_BLOCKED
        reader = Reader(d)
        reader.start()
        relay.run()
        writer.join(TIMEOUT)
        assert reader.data() == stream[:sent]
        assert relay.total == sent
        assert relay.calls[-1][1:] == (0, twin.SRC_EOF)
    finally:
        relay.close()


def test_budget_bound_includes_initial_flush(twin, conns):
    # moved <= pending_in + budget; exactly: bytes taken from src (moved + pending_out -
    # pending_in) <= budget, and == budget when the call returns status 0.
    a, b, c, d = conns()
    reader = Reader(d)
    reader.start()
    relay = Relay(twin, b, c)
    prefix = payload(40_000, seed=11)
    data = payload(1 << 20, seed=12)
    try:
        # Bytes left in the pipe by an earlier call (written directly here).
        assert os.write(relay.w, prefix) == len(prefix)
        relay.pending = len(prefix)
        writer = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)),
                                  daemon=True)
        writer.start()
        budget = 20_000
        wait_until(lambda: readable_bytes(b) >= 2 * budget, what="data at b", interval=0.001)
        moved, pending, status = relay.step(budget=budget)
        assert moved <= len(prefix) + budget
        assert moved + pending - len(prefix) <= budget
        # src still had data: the call must not claim SRC_DRAINED, so the caller calls again.
        assert status in (0, twin.DST_BLOCKED)
        assert readable_bytes(b) > 0
        if status == 0:
            assert moved == len(prefix) + budget and pending == 0
        relay.run()
        writer.join(TIMEOUT)
        assert reader.data() == prefix + data
    finally:
        relay.close()


def test_budget_zero_only_flushes(twin, conns):
    a, b, c, d = conns()
    relay = Relay(twin, b, c)
    try:
        a.sendall(b"x" * 1000)
        wait_until(lambda: readable_bytes(b) == 1000, what="data at b", interval=0.001)
        os.write(relay.w, b"y" * 10)
        relay.pending = 10
        assert relay.step(budget=0) == (10, 0, 0)
        assert readable_bytes(b) == 1000  # src untouched
        assert relay.step(budget=0) == (0, 0, 0)
    finally:
        relay.close()


def test_reset_destination_raises(twin, conns):
    a, b, c, d = conns()
    relay = Relay(twin, b, c)
    try:
        d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        d.close()  # RST to c
        wait_poll(c, select.POLLERR | select.POLLHUP, "RST on c")
        a.sendall(b"z" * 1000)
        wait_until(lambda: readable_bytes(b) == 1000, what="data at b", interval=0.001)
        with pytest.raises(OSError) as ei:
            relay.step()
        assert ei.value.errno in (errno.ECONNRESET, errno.EPIPE)
    finally:
        relay.close()


def test_reset_source_raises(twin, conns):
    a, b, c, d = conns()
    relay = Relay(twin, b, c)
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()  # RST to b
        wait_poll(b, select.POLLERR | select.POLLHUP, "RST on b")
        with pytest.raises(OSError) as ei:
            relay.step()
        assert ei.value.errno == errno.ECONNRESET
    finally:
        relay.close()


def test_bad_arguments(twin):
    r, w = chooser.make_pipe()
    try:
        with pytest.raises(ValueError):
            twin.pump(r, w, r, w, -1, 10)
        with pytest.raises(ValueError):
            twin.pump(r, w, r, w, 0, -1)
    finally:
        chooser.close_pipe(r, w)


def test_constants_match(twin):
    assert (twin.SRC_EOF, twin.DST_BLOCKED, twin.SRC_DRAINED) == (1, 2, 4)
    assert twin.CHUNK == 256 * 1024


# --- both twins, same deterministic scenario -------------------------------------------------

def _scenario(mod):
    """A deterministic sequence of pump calls; returns their (moved, pending, status)."""
    a, b = tcp_pair()
    c, d = tcp_pair(rcvbuf=16 * 1024)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    b.setblocking(False)
    c.setblocking(False)
    r, w = chooser.make_pipe()
    out = []

    def call(pending, budget):
        res = mod.pump(b.fileno(), c.fileno(), r, w, pending, budget)
        out.append(res)
        return res

    try:
        os.write(w, b"p" * 1000)
        call(1000, 0)                  # flush pending into an idle socket, budget 0
        call(0, 1 << 20)               # nothing at src
        a.sendall(b"s" * 5000)
        wait_until(lambda: readable_bytes(b) == 5000, what="data at b", interval=0.001)
        call(0, 2000)                  # budget hit, src still readable
        call(0, 1 << 20)               # the rest, then EAGAIN
        a.shutdown(socket.SHUT_WR)
        wait_poll(b, select.POLLRDHUP, "FIN on b")
        call(0, 1 << 20)               # EOF
        call(0, 1 << 20)               # EOF is sticky
        # Fill c until D's window is closed and c's send buffer stays full: what c holds is
        # all unsent (nothing in flight whose ACK could still free room), whatever the sizes.
        filler = b"f" * 65536

        def c_full():
            try:
                while True:
                    c.send(filler)
            except BlockingIOError:
                pass
            return 0 < unsent(c) == queued(c)

        wait_until(c_full, what="D's window closed with c's send buffer full", interval=0.001)
        os.write(w, b"q" * 100)
        call(100, 1 << 20)             # dst blocked with bytes pending
        call(100, 1 << 20)
        return out
    finally:
        chooser.close_pipe(r, w)
        for s in (a, b, c, d):
            s.close()


def test_twins_give_identical_sequences():
    names = ["cython", "python"] if REQUIRE_ALL else list(chooser.twins())
    seqs = {name: _scenario(need.twin(chooser.twins(), name, "pump")) for name in names}
    m = need.twin(chooser.twins(), names[0], "pump")
    expected = [
        (1000, 0, 0),
        (0, 0, m.SRC_DRAINED),
        (2000, 0, 0),
        (3000, 0, m.SRC_DRAINED),
        (0, 0, m.SRC_EOF),
        (0, 0, m.SRC_EOF),
        (0, 100, m.DST_BLOCKED),
        (0, 100, m.DST_BLOCKED),
    ]
    for name, seq in seqs.items():
        assert seq == expected, name
    assert len({tuple(s) for s in seqs.values()}) == 1


def test_twins_raise_identically_on_reset(conns):
    errs = {}
    for name in (["cython", "python"] if REQUIRE_ALL else list(chooser.twins())):
        mod = need.twin(chooser.twins(), name, "pump")
        a, b, c, d = conns()
        d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        d.close()
        wait_poll(c, select.POLLERR | select.POLLHUP, "RST on c")
        r, w = chooser.make_pipe()
        try:
            os.write(w, b"x" * 10)
            with pytest.raises(OSError) as ei:
                mod.pump(b.fileno(), c.fileno(), r, w, 10, 1000)
            errs[name] = (type(ei.value), ei.value.errno)
        finally:
            chooser.close_pipe(r, w)
    assert len(set(errs.values())) == 1, errs


# --- the chooser -----------------------------------------------------------------------------

def _impl_with(env_value):
    env = dict(os.environ)
    env.pop("GLASSWING_PUMP", None)
    if env_value is not None:
        env["GLASSWING_PUMP"] = env_value
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", "from dataplane.relay import pump; print(pump.IMPL)"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    return out.returncode, out.stdout.strip()


def test_chooser_env():
    has_c = "cython" in chooser.twins()
    if REQUIRE_ALL:
        assert has_c, "dataplane.relay._pump_c is not built"
    assert _impl_with("python") == (0, "python")
    assert _impl_with(None) == (0, "cython" if has_c else "python")
    rc, impl = _impl_with("cython")
    assert (rc == 0 and impl == "cython") if has_c else rc != 0
    assert chooser.IMPL in ("cython", "python")
    assert chooser.pump is chooser.twins()[chooser.IMPL].pump


def test_make_pipe():
    r, w = chooser.make_pipe()
    try:
        assert os.get_blocking(r) is False and os.get_blocking(w) is False
        assert os.get_inheritable(r) is False and os.get_inheritable(w) is False
        assert pipe_capacity(w) >= 65536  # 1 MiB when permitted
    finally:
        chooser.close_pipe(r, w)


# --- copy(): the recv/send loop, in both twins ------------------------------------------------

class CopyRelay(Relay):
    """One direction B -> C through copy(), with the invariants checked on every call; run()
    is Relay's loop (the statuses mean the same)."""

    def __init__(self, mod, src, dst, budget=1 << 20):
        self.mod, self.src, self.dst, self.budget = mod, src, dst, budget
        self.rest, self.total = b"", 0

    def step(self, budget=None):
        m = self.mod
        budget = self.budget if budget is None else budget
        before = self.rest
        moved, rest, status = m.copy(self.src.fileno(), self.dst.fileno(), before, budget)
        assert isinstance(rest, bytes)
        assert status in (0, m.SRC_EOF, m.DST_BLOCKED, m.SRC_DRAINED)
        assert bool(rest) == (status == m.DST_BLOCKED)
        taken = moved + len(rest) - len(before)
        assert 0 <= taken <= budget and len(rest) <= m.COPY_CHUNK
        if status == 0:
            assert taken == budget
        self.rest, self.total = rest, self.total + moved
        return moved, rest, status


@pytest.mark.parametrize("size,budget", [(0, 1 << 20), (1, 1 << 20), (65537, 1 << 20),
                                         (8 << 20, 1 << 20), (1 << 20, 10_000)])
def test_copy_payload_arrives_byte_for_byte(twin, conns, size, budget):
    a, b, c, d = conns()
    data = payload(size, seed=size + 1)
    writer = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)), daemon=True)
    reader = Reader(d)
    writer.start()
    reader.start()
    CopyRelay(twin, b, c, budget).run()
    writer.join(TIMEOUT)
    assert reader.data() == data


def test_copy_keeps_what_a_blocked_destination_did_not_take(twin):
    """dst stops reading: copy returns DST_BLOCKED with the unwritten rest, writes it first
    on the next call, and nothing is lost or doubled."""
    a, b = tcp_pair()
    c, d = tcp_pair(rcvbuf=4096)
    try:
        for s in (b, c):
            s.setblocking(False)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = payload(2 << 20, seed=9)
        threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)), daemon=True).start()
        relay = CopyRelay(twin, b, c)
        statuses = set()
        for _ in range(200):  # d reads nothing yet: the relay must block with a rest
            _, rest, status = relay.step()
            statuses.add(status)
            if status == twin.DST_BLOCKED:
                break
            wait_poll(b, select.POLLIN, "bytes from A")
        assert twin.DST_BLOCKED in statuses and relay.rest
        reader = Reader(d)
        reader.start()
        relay.run()
        assert reader.data() == data and relay.total == len(data)
    finally:
        for s in (a, b, c, d):
            s.close()


def test_copy_reports_a_reset_source(twin):
    a, b = tcp_pair()
    c, d = tcp_pair()
    try:
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()
        wait_poll(b, select.POLLIN, "the reset")
        with pytest.raises(ConnectionResetError):
            twin.copy(b.fileno(), c.fileno(), b"", 1 << 20)
    finally:
        for s in (b, c, d):
            s.close()


def test_copy_twins_agree_on_constants_and_bad_budget(twin):
    assert twin.COPY_CHUNK == 256 * 1024
    with pytest.raises(ValueError):
        twin.copy(0, 1, b"", -1)
