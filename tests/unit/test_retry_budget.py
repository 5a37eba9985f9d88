"""dataplane.policy.retry_budget: retries stay within min_per_second * ttl plus a
ratio of the requests seen over a sliding window; a fake clock moves it."""
import math
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from dataplane.policy.retry_budget import RetryBudget


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def spend(budget, n):
    return sum(budget.try_retry() for _ in range(n))


def test_ratio_of_requests_bounds_retries():
    b = RetryBudget(clock=Clock(), ratio=0.2, min_per_second=0, ttl=10)
    for _ in range(50):
        b.record_request()
    assert b.allowed() == 10
    assert spend(b, 15) == 10
    assert b.refused == 5


def test_reserve_allows_retries_without_traffic():
    b = RetryBudget(clock=Clock(), ratio=0.2, min_per_second=1, ttl=10)
    assert spend(b, 12) == 10            # 1/s over a 10 s window


def test_reserve_and_ratio_add_up():
    b = RetryBudget(clock=Clock(), ratio=0.5, min_per_second=0.2, ttl=10)
    for _ in range(6):
        b.record_request()
    assert spend(b, 10) == 5             # 2 + 0.5 * 6


def test_fractional_allowance_rounds_down():
    b = RetryBudget(clock=Clock(), ratio=0.1, min_per_second=0, ttl=10)
    for _ in range(39):                  # 3.9 allows 3
        b.record_request()
    assert spend(b, 5) == 3
    b.record_request()                   # 4.0 allows 4
    assert spend(b, 2) == 1


def test_float_error_does_not_cost_a_retry():
    b = RetryBudget(clock=Clock(), ratio=0.29, min_per_second=0, ttl=10)
    for _ in range(100):                 # 0.29 * 100 is 28.999999999999996 in floats
        b.record_request()
    assert spend(b, 40) == 29


def test_no_requests_no_reserve_no_retries():
    b = RetryBudget(clock=Clock(), ratio=0.2, min_per_second=0)
    assert spend(b, 3) == 0


def test_requests_and_retries_leave_the_window_after_ttl():
    clock = Clock(100.0)
    b = RetryBudget(clock=clock, ratio=0.5, min_per_second=0, ttl=10, slots=10)
    for _ in range(4):
        b.record_request()
    assert spend(b, 2) == 2 and spend(b, 1) == 0
    clock.t = 109.9                      # slot 109 is 9 slots after 100: still in
    assert spend(b, 1) == 0
    for _ in range(2):
        b.record_request()               # 6 requests: room for one more
    assert spend(b, 2) == 1
    clock.t = 110.0                      # slot 100 leaves: 2 requests, 1 retry remain
    assert b.allowed() == 1
    assert spend(b, 1) == 0
    clock.t = 120.0                      # everything has left
    assert b.allowed() == 0
    for _ in range(2):
        b.record_request()
    assert spend(b, 2) == 1


def test_retries_do_not_earn_retries():
    b = RetryBudget(clock=Clock(), ratio=1.0, min_per_second=0)
    b.record_request()
    assert spend(b, 5) == 1


@pytest.mark.parametrize("kw", [dict(ratio=-0.1), dict(ttl=0), dict(slots=0),
                                dict(min_per_second=-1)])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        RetryBudget(clock=Clock(), **kw)


def test_admitted_retries_outlive_the_requests_that_earned_them():
    """The budget bounds each retry when it is admitted, not every window after: requests at
    t=0 earn retries at t=3; at t=10 the requests leave and the retries stay, so that window
    holds 6 retries on 0 requests, and no retry is admitted until they leave at t=13."""
    clock = Clock(0.0)
    b = RetryBudget(clock=clock, ratio=0.2, min_per_second=0.5, ttl=10, slots=10)
    for _ in range(5):
        b.record_request()
    clock.t = 3.0
    assert spend(b, 7) == 6              # 5 + 0.2 * 5
    clock.t = 10.0
    assert b.allowed() == 5 and spend(b, 1) == 0
    clock.t = 12.9
    assert spend(b, 1) == 0
    clock.t = 13.0                       # the retries leave too: the reserve is back
    assert spend(b, 6) == 5


@given(st.lists(st.tuples(st.sampled_from(["req", "retry", "tick"]), st.floats(0, 3) | st.just(5.0)),
                max_size=300))
def test_a_retry_is_admitted_exactly_when_the_window_has_room(ops):
    """What the budget promises, whatever the mix of requests, retries and time passing: a
    retry is admitted if and only if, counting it, the retries in the window stay within
    5 + 0.2 * the requests in the window at that moment (the window: the current 1 s slot
    and the 9 before it, from a log kept here, in exact arithmetic). It promises nothing
    about later windows (test_admitted_retries_outlive_the_requests_that_earned_them)."""
    clock = Clock(0.0)
    b = RetryBudget(clock=clock, ratio=0.2, min_per_second=0.5, ttl=10, slots=10)
    log = []  # (time, kind)
    refused = 0

    def in_window(kind):
        oldest = math.floor(clock.t) - 9
        return sum(1 for t, k in log if k == kind and math.floor(t) >= oldest)

    for op, dt in ops:
        if op == "tick":
            clock.t += dt
        elif op == "req":
            b.record_request()
            log.append((clock.t, "req"))
        else:
            room = in_window("retry") + 1 <= Fraction(5) + Fraction(1, 5) * in_window("req")
            assert b.try_retry() == room
            if room:
                log.append((clock.t, "retry"))
            else:
                refused += 1
    assert b.refused == refused
