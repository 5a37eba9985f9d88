"""The kernel relay (bpf/kernel_relay.c with the C engine's mode "kernel") against the real
kernel. Where dataplane/kernel/relay_gate.py turns the kernel relay off (every kernel, until its
close hang is fixed; GLASSWING_KERNEL_RELAY=on turns it on) the engine is given no maps, as the
forwarder does, and the same tests check that mode "kernel" then carries every byte as the
engine alone (nothing in the kernel). With the kernel relay: bytes arrive exactly both ways with half-close in either order, a connection of small
messages goes to the kernel after 16 turns (the forwarder is then not woken per message) and
a short one never does, a direction that carries bulk is taken back to user space without
losing or reordering a byte, a segment TCP queues with bytes it had already received is
carried once, bytes and FINs that came before the hand-over get through,
resets reach the other side, and nothing is left in the maps once connections end.

Topology as in tests/unit/test_engine.py: A <-> B and C <-> D are TCP loopback connections;
the engine joins B and C.
"""
import ctypes
import errno
import hashlib
import json
import select
import socket
import struct
import subprocess
import threading

import pytest

from dataplane.kernel import maps as bpf_maps
from dataplane.kernel import syscalls as bpf_sys
from dataplane.kernel import relay_gate as kernel_relay
from dataplane.kernel.programs import Programs
from dataplane.kernel.structs import KrState
from dataplane.relay.engine import twins
from tests.support.engine import carries_exactly, hand_over, wait_done
from tests.support.need import need_root_and_bpf
from tests.support.sockets import payload, read_all, readable_bytes, relay_pair, writer
from tests.support.wait import TIMEOUT, wait_until

PIN = "/sys/fs/bpf/glasswing/krtest"
KERNEL = kernel_relay.supported()  # else mode kernel runs as the engine alone


@pytest.fixture(scope="module")
def programs():
    need_root_and_bpf()
    progs = Programs(PIN)
    try:
        progs.load()
        ids = our_ids(progs)
        assert ids, "the verdict program and its maps were not handed over"
        yield progs
    finally:
        progs.close()
        bpf_maps.unpin_all(PIN)
    wait_until(lambda: not set(loaded_ids()) & ids, 5,  # freed after an RCU grace period
               "the kernel relay to go with its owner", 0.05)


def our_ids(progs) -> set:
    """Kernel ids of the relay's program and maps, from our fds."""
    out = set()
    for fd in progs.relay.values():
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith(("prog_id:", "map_id:")):
                    kind, v = line.split(":")
                    out.add((kind, int(v)))
    return out


def loaded_ids() -> list:
    out = []
    for kind, what in (("prog_id", "prog"), ("map_id", "map")):
        r = subprocess.run(["bpftool", "-j", what, "show"], capture_output=True, text=True)
        out += [(kind, x["id"]) for x in json.loads(r.stdout or "[]")]
    return out


@pytest.fixture
def engine(programs):
    engines = twins()
    if "c" not in engines:
        pytest.fail("relay engine in C not built: the kernel relay needs it")
    e = engines["c"]()
    r = programs.relay
    if KERNEL:
        ring_bytes = bpf_sys.map_max_entries(r["gw_kr_events"])
        assert e.kernel(r["gw_kr_socks"], r["gw_kr_state"], r["gw_kr_events"], ring_bytes) is True
    yield e
    e.close()
    assert state_entries(programs) == 0, "an ended connection left its entries"


def states(programs) -> list:
    """The kernel relay's state entries (struct gw_kr_state)."""
    fd, out = programs.relay["gw_kr_state"], []
    key, nxt = None, ctypes.c_uint64()
    while bpf_sys.map_next_key(fd, key, nxt):
        key = ctypes.c_uint64(nxt.value)
        value = KrState()
        if bpf_sys.map_lookup(fd, key, value):
            out.append(value)
    return out


def state_entries(programs) -> int:
    return len(states(programs))


@pytest.mark.parametrize("size_ab,size_dc", [(0, 0), (1, 0), (0, 5), (3_000_000, 17),
                                             (123_457, 2_500_001), (40_000, 40_000)])
def test_bytes_arrive_exactly_both_ways_with_half_close(engine, size_ab, size_dc):
    carries_exactly(engine, "kernel", size_ab, size_dc)


def ping_pong(a, d, rounds, start=0):
    for i in range(start, start + rounds):
        msg = b"m%05d" % i
        a.sendall(msg)
        assert d.recv(64) == msg
        d.sendall(msg[::-1])
        assert a.recv(64) == msg[::-1]


def test_small_messages_go_to_the_kernel(engine, programs):
    """A ping-pong of small messages: after its first KR_AFTER (16) turns in user space, the
    connection's bytes are counted by the verdict program (they went socket to socket in the
    kernel). Its FIN then comes back through the engine."""
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c, mode="kernel")
    ping_pong(a, d, 200)
    assert engine.in_kernel() == (1 if KERNEL else 0)
    assert engine.bytes(cid) == (1200, 1200)
    if KERNEL:
        assert redirected(programs) >= 2400 - 16 * 6, "the bytes did not go through the kernel"
    else:
        assert state_entries(programs) == 0
    a.close()
    assert read_all(d) == b""
    d.close()
    assert wait_done(engine) == [(cid, 0, 1200, 1200)]
    assert engine.in_kernel() == 0


def test_a_short_connection_never_enters_the_kernel(engine, programs):
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c, mode="kernel")
    ping_pong(a, d, 3)
    assert engine.bytes(cid) == (18, 18) and state_entries(programs) == 0 and engine.in_kernel() == 0
    a.close()
    d.close()
    assert wait_done(engine) == [(cid, 0, 18, 18)]


def redirected(programs) -> int:
    return sum(v.redirected for v in states(programs))


def test_bulk_after_small_messages_keeps_order(engine, programs):
    """Small messages go through the kernel, then one direction carries bulk: the engine
    takes it back only once the kernel has written everything it took, so the stream on D
    is exactly what A wrote."""
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c, mode="kernel")
    ping_pong(a, d, 20)  # now in the kernel
    assert state_entries(programs) == (2 if KERNEL else 0)
    small = [payload(10 + i, 1 + i * 37 % 900) for i in range(300)]
    bulk = payload(99, 4_000_000)
    t = threading.Thread(target=writer, args=(a, small + [bulk, b"tail"]))
    t.start()
    got = read_all(d)
    t.join(TIMEOUT)
    want = b"".join(small) + bulk + b"tail"
    assert len(got) == len(want) and hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
    d.sendall(b"bye")
    d.shutdown(socket.SHUT_WR)
    assert read_all(a) == b"bye"
    assert wait_done(engine) == [(cid, 0, len(want) + 120, 123)]


def test_bytes_and_fin_before_the_hand_over_get_through(engine):
    a, b, c, d = relay_pair()
    a.sendall(b"early request")
    a.shutdown(socket.SHUT_WR)
    d.sendall(b"server speaks first")
    wait_until(lambda: readable_bytes(b) == 13 and fin_waiting(b) and readable_bytes(c) == 19,
               what="both FIN and bytes in B's and C's receive queues")
    cid = hand_over(engine, b, c, mode="kernel", to_b=b"read ahead:")
    assert read_all(d) == b"read ahead:early request"
    assert a.recv(100) == b"server speaks first"
    d.shutdown(socket.SHUT_WR)
    assert read_all(a) == b""
    assert wait_done(engine) == [(cid, 0, 24, 19)]


def fin_waiting(s) -> bool:
    p = select.poll()
    p.register(s, select.POLLRDHUP)
    return bool(p.poll(0))


def test_a_reset_on_one_side_resets_the_other(engine):
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c, mode="kernel")
    ping_pong(a, d, 20)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    a.close()
    (ended,) = wait_done(engine)
    assert ended[0] == cid and ended[1] in (errno.ECONNRESET, errno.EPIPE)
    with pytest.raises(ConnectionResetError):
        while d.recv(10):
            pass


@pytest.mark.parametrize("request_", ["abort", "close_conn"])
def test_ends_on_request(engine, request_):
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c, mode="kernel")
    ping_pong(a, d, 20)
    assert getattr(engine, request_)(cid) is True
    (ended,) = wait_done(engine)
    assert ended[:2] == (cid, errno.ECONNABORTED if request_ == "abort" else 0)


def test_many_connections_at_once(engine):
    n = 200
    pairs = [relay_pair() for _ in range(n)]
    ids = [hand_over(engine, b, c, mode="kernel") for _a, b, c, _d in pairs]
    for i, (a, _b, _c, d) in enumerate(pairs):
        ping_pong(a, d, 10 + i % 20)  # half of them in the kernel
        a.close()
        d.close()
    ended = wait_done(engine, n)
    assert sorted(e[0] for e in ended) == sorted(ids) and all(e[1] == 0 for e in ended)


# TCP_REPAIR (linux/tcp.h): read a socket's sequence numbers to forge its next segment.
TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ, TCP_TIMESTAMP = 19, 20, 21, 24
TCP_RECV_QUEUE, TCP_SEND_QUEUE, TCP_REPAIR_OFF_NO_WP = 1, 2, -1


def next_seqs(s) -> tuple:
    """(snd_nxt, rcv_nxt) of an idle socket, through TCP_REPAIR (CAP_NET_ADMIN)."""
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    try:
        out = []
        for queue in (TCP_SEND_QUEUE, TCP_RECV_QUEUE):
            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
            out.append(s.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xffffffff)
        return tuple(out)
    finally:
        s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)


def forge_segment(s, seq: int, data: bytes) -> bytes:
    """A TCP segment (header and data) as s would send it from seq: acks what s has received,
    with its timestamp option, checksum over the 127.0.0.1 pseudo-header."""
    (src_ip, sport), (dst_ip, dport) = s.getsockname(), s.getpeername()
    _, ack = next_seqs(s)
    tsval = s.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) & 0xffffffff
    options = b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, 0)
    doff = (20 + len(options)) // 4
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, 0x18, 1024, 0, 0)
    segment = header + options + data
    pseudo = socket.inet_aton(src_ip) + socket.inet_aton(dst_ip) + struct.pack("!BBH", 0, 6, len(segment))
    blob = pseudo + segment + b"\0" * (len(segment) % 2)
    total = sum(struct.unpack(f"!{len(blob) // 2}H", blob))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return segment[:16] + struct.pack("!H", ~total & 0xffff) + segment[18:]


@pytest.mark.parametrize("bulk_first", [False, True])
def test_a_segment_that_repeats_bytes_is_carried_once(engine, programs, bulk_first):
    """TCP queues a segment that starts before what it has received (a retransmission that
    overlaps, or segments coalesced in the socket backlog) whole, and the kernel's read_skb
    hands all of it to the verdict: its repeated head must not reach D twice. A forged
    segment from A repeats A's last 6 bytes and adds 7 new ones; A then sends the 7 itself
    (TCP drops them as already received), and the connection goes on."""
    a, b, c, d = relay_pair()
    cid = hand_over(engine, b, c, mode="kernel")
    ping_pong(a, d, 20)  # in the kernel; A's last bytes are b"m00019"
    sent = 120
    if bulk_first:  # the direction is read in user space (SK_PASS) from here
        bulk = payload(5, 1_000_000)
        t = threading.Thread(target=writer, args=(a, [bulk], False))
        t.start()
        got = b""
        while len(got) < len(bulk):
            got += d.recv(1 << 20)
        t.join(TIMEOUT)
        assert got == bulk
        sent += len(bulk)
    snd_nxt, _ = next_seqs(a)  # D has had every byte: B's rcv_nxt
    old = (b"m00019" if not bulk_first else bulk)[-6:]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        raw.sendto(forge_segment(a, (snd_nxt - 6) & 0xffffffff, old + b"NEWDATA"), ("127.0.0.1", 0))
    finally:
        raw.close()
    assert d.recv(64) == b"NEWDATA"
    a.sendall(b"NEWDATA")
    ping_pong(a, d, 3, start=20)
    if KERNEL:
        # The forged head, and A's own NEWDATA (7) again when A (which never had it acked: B's
        # ack of the forged bytes is ahead of A's snd_nxt) resends it merged with its next bytes.
        assert sum(v.repeated for v in states(programs)) in (6, 13)
    a.close()
    assert read_all(d) == b""
    d.close()
    assert wait_done(engine) == [(cid, 0, sent + 7 + 18, 120 + 18)]
