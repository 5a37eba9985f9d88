"""dataplane.relay.idle_timer: an idle deadline fed by reads or by a polled byte
counter; a fake clock moves it."""
import pytest

from dataplane.relay.idle_timer import IdleTimer


class Clock:
    def __init__(self, t=50.0):
        self.t = t

    def __call__(self):
        return self.t


def test_expires_after_timeout_without_activity():
    clock = Clock()
    it = IdleTimer(30, clock=clock)
    clock.t += 29.5
    assert it.remaining() == 0.5 and not it.expired()
    clock.t += 0.5
    assert it.remaining() == 0 and it.expired()
    clock.t += 100
    assert it.remaining() == 0


def test_activity_pushes_the_deadline():
    clock = Clock()
    it = IdleTimer(30, clock=clock)
    clock.t += 20
    it.activity()
    clock.t += 20
    assert it.remaining() == 10 and not it.expired()


def test_polled_counter_counts_only_when_it_moved():
    clock = Clock()
    it = IdleTimer(10, clock=clock)
    clock.t += 5
    it.observe(0)                        # nothing moved since the start
    assert it.remaining() == 5
    it.observe(1200)
    assert it.remaining() == 10
    clock.t += 8
    it.observe(1200)                     # same count: idle all along
    assert it.remaining() == 2
    clock.t += 2
    assert it.expired()


def test_zero_timeout_never_expires():
    clock = Clock()
    it = IdleTimer(0, clock=clock)
    clock.t += 10**9
    assert it.remaining() == float("inf") and not it.expired()


def test_negative_timeout_is_refused():
    with pytest.raises(ValueError):
        IdleTimer(-1, clock=Clock())
