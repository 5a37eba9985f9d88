"""dataplane.policy.circuit_breaker: caps on open and pending upstream connects per
service, with the limit that tripped named, and every admitted connect
released exactly once."""
import pytest
from hypothesis import given, strategies as st

from dataplane.policy.circuit_breaker import CircuitBreaker


def test_zero_limits_mean_no_limit():
    cb = CircuitBreaker()
    assert all(cb.try_acquire() is None for _ in range(10_000))
    assert (cb.active, cb.pending) == (10_000, 10_000)


def test_max_connections_counts_connecting_and_open():
    cb = CircuitBreaker(max_connections=2)
    assert cb.try_acquire() is None
    cb.connected()
    assert cb.try_acquire() is None          # one open, one connecting
    assert cb.try_acquire() == "max_connections"
    cb.release(connected=False)              # the connecting one failed
    assert cb.try_acquire() is None
    assert cb.tripped == {"max_connections": 1, "max_pending": 0}


def test_max_pending_limits_connects_in_progress_only():
    cb = CircuitBreaker(max_connections=10, max_pending=2)
    assert cb.try_acquire() is None and cb.try_acquire() is None
    assert cb.try_acquire() == "max_pending"
    cb.connected()                           # one of the two is through
    assert cb.try_acquire() is None
    assert (cb.active, cb.pending) == (3, 2)
    assert cb.tripped == {"max_connections": 0, "max_pending": 1}


def test_max_connections_is_reported_before_max_pending():
    cb = CircuitBreaker(max_connections=1, max_pending=1)
    assert cb.try_acquire() is None
    assert cb.try_acquire() == "max_connections"


def test_closing_an_open_connection_frees_its_slot():
    cb = CircuitBreaker(max_connections=1)
    cb.try_acquire()
    cb.connected()
    assert cb.try_acquire() == "max_connections"
    cb.release(connected=True)
    assert (cb.active, cb.pending) == (0, 0)
    assert cb.try_acquire() is None


def test_unmatched_calls_raise_instead_of_lifting_the_limit():
    cb = CircuitBreaker(max_connections=1)
    with pytest.raises(ValueError):
        cb.connected()
    with pytest.raises(ValueError):
        cb.release(connected=True)
    with pytest.raises(ValueError):
        cb.release(connected=False)
    assert (cb.active, cb.pending) == (0, 0)


@given(st.integers(0, 5), st.integers(0, 5), st.lists(st.sampled_from("aocf"), max_size=60))
def test_counts_never_exceed_the_limits(max_conn, max_pend, ops):
    """a: acquire, o: a pending one connects, c: an open one closes, f: a pending one fails."""
    cb = CircuitBreaker(max_connections=max_conn, max_pending=max_pend)
    pending = opened = 0
    for op in ops:
        if op == "a":
            if cb.try_acquire() is None:
                pending += 1
        elif op == "o" and pending:
            cb.connected()
            pending, opened = pending - 1, opened + 1
        elif op == "c" and opened:
            cb.release(connected=True)
            opened -= 1
        elif op == "f" and pending:
            cb.release(connected=False)
            pending -= 1
        assert (cb.pending, cb.active) == (pending, pending + opened)
        assert not max_conn or cb.active <= max_conn
        assert not max_pend or cb.pending <= max_pend
