"""Driving a relay engine (dataplane.relay.engine's twins) from a test: hand a B/C pair
over, wait for connections to end, carry random payloads both ways byte for byte."""
import hashlib
import select
import time

from tests.support.sockets import crossing, payload, relay_pair
from tests.support.wait import TIMEOUT, wait_until


def hand_over(e, b, c, **kw):
    return e.add(b.detach(), c.detach(), **kw)


def wait_done(e, n=1, timeout=TIMEOUT):
    """The next n ended connections."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {n} connections ended"
        select.select([e.fileno()], [], [], left)
        out += e.done()
    return out


def counted(e, cid, want, timeout=TIMEOUT) -> bool:
    """The engine's counters reach want: it counts after its write returns, which can be
    after the peer has read the bytes. AssertionError if they do not."""
    return wait_until(lambda: e.bytes(cid) == want, timeout,
                      f"connection {cid} to count {want} bytes", 0.001)


def carries_exactly(engine, mode, size_ab, size_dc) -> int:
    """Random payloads both ways through one connection in mode, with half-close; asserts
    they arrive byte for byte and the end reports them; returns the connection's id."""
    a, b, c, d = relay_pair()
    ab, dc = payload(1, size_ab), payload(2, size_dc)
    cid = hand_over(engine, b, c, mode=mode)
    threads, got = crossing(a, d, ab, dc)
    for t in threads:
        t.start()
    ended = wait_done(engine)
    for t in threads:
        t.join(TIMEOUT)
    a.close()
    d.close()
    assert hashlib.sha256(got["ab"]).digest() == hashlib.sha256(ab).digest() and len(got["ab"]) == size_ab
    assert got["dc"] == dc
    assert ended == [(cid, 0, size_ab, size_dc)]
    return cid
