"""dataplane.policy.token_bucket: the local rate limit on new connections; a fake
clock makes every refill exact."""
import pytest
from hypothesis import given, strategies as st

from dataplane.policy.token_bucket import TokenBucket


class Clock:
    def __init__(self, t=500.0):
        self.t = t

    def __call__(self):
        return self.t


def test_starts_full_and_empties_after_burst():
    tb = TokenBucket(10, 3, clock=Clock())
    assert [tb.try_take() for _ in range(5)] == [True, True, True, False, False]
    assert tb.refused == 2


def test_refills_at_the_rate():
    clock = Clock()
    tb = TokenBucket(10, 3, clock=clock)
    for _ in range(3):
        tb.try_take()
    clock.t += 0.05
    assert not tb.try_take()         # half a token
    clock.t += 0.05
    assert tb.try_take()             # a whole one after 0.1 s at 10/s
    assert not tb.try_take()


def test_never_holds_more_than_burst():
    clock = Clock()
    tb = TokenBucket(10, 3, clock=clock)
    clock.t += 3600
    assert tb.available() == 3
    assert [tb.try_take() for _ in range(4)] == [True, True, True, False]


def test_burst_defaults_to_rate_as_in_the_proto():
    assert TokenBucket(7, clock=Clock()).burst == 7
    assert TokenBucket(7, 0, clock=Clock()).burst == 7


def test_taking_several_is_all_or_nothing():
    tb = TokenBucket(1, 5, clock=Clock())
    assert tb.try_take(3)
    assert not tb.try_take(3)
    assert tb.available() == 2


def test_wait_time_says_when_to_come_back():
    clock = Clock()
    tb = TokenBucket(4, 2, clock=clock)
    assert tb.wait_time() == 0
    tb.try_take(2)
    assert tb.wait_time() == 0.25
    assert tb.wait_time(2) == 0.5
    assert tb.wait_time(3) == float("inf")   # more than burst: never
    clock.t += 0.25
    assert tb.wait_time() == 0 and tb.try_take()


def test_clock_stepping_back_does_not_mint_tokens():
    clock = Clock()
    tb = TokenBucket(10, 1, clock=clock)
    tb.try_take()
    clock.t -= 5
    assert not tb.try_take()
    clock.t += 5                         # back where it was: still no time has passed
    assert not tb.try_take()
    clock.t += 0.1
    assert tb.try_take()


@pytest.mark.parametrize("rate,burst", [(0, 1), (-1, 1), (1, 0.5)])
def test_bad_settings_are_refused(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, clock=Clock())


@given(st.integers(1, 100), st.integers(1, 50), st.lists(st.floats(0, 0.5), max_size=200))
def test_admits_at_most_burst_plus_rate_times_elapsed(rate, burst, steps):
    clock = Clock()
    tb = TokenBucket(rate, burst, clock=clock)
    admitted = 0
    for dt in steps:
        clock.t += dt
        admitted += tb.try_take()
        assert admitted <= burst + rate * (clock.t - 500.0) + 1e-6
