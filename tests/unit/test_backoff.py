"""dataplane.policy.backoff: exponential bounds, capped, with full or decorrelated
jitter drawn from the injected rng."""
import random

import pytest
from hypothesis import given, strategies as st

from dataplane.policy.backoff import Backoff


def test_no_jitter_doubles_up_to_the_cap():
    b = Backoff(0.025, 0.5, jitter="none")
    assert [b.next() for _ in range(7)] == [0.025, 0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


def test_full_jitter_draws_uniformly_below_the_doubling_bound():
    r = random.Random(11)
    want = [r.uniform(0, c) for c in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0)]
    b = Backoff(0.1, 1.0, rng=random.Random(11))
    assert [b.next() for _ in range(6)] == want


def test_decorrelated_jitter_grows_from_the_previous_delay():
    r, prev, want = random.Random(5), 0.1, []
    for _ in range(8):
        prev = min(2.0, r.uniform(0.1, prev * 3))
        want.append(prev)
    b = Backoff(0.1, 2.0, rng=random.Random(5), jitter="decorrelated")
    got = [b.next() for _ in range(8)]
    assert got == want
    assert all(0.1 <= d <= 2.0 for d in got)


def test_reset_starts_over():
    b = Backoff(1, 8, jitter="none")
    assert [b.next() for _ in range(3)] == [1, 2, 4]
    b.reset()
    assert b.attempt == 0 and b.next() == 1


def test_large_attempt_counts_stay_at_the_cap():
    b = Backoff(0.01, 3.0, jitter="none")
    assert b.ceiling(1000) == 3.0
    assert b.ceiling(63) == 3.0


@pytest.mark.parametrize("kw", [dict(base=0, cap=1), dict(base=2, cap=1),
                                dict(base=1, cap=2, jitter="equal"),
                                dict(base=1, cap=2, jitter="full")])  # full without rng
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        Backoff(**kw)


@given(st.floats(0.001, 1), st.floats(1, 60), st.sampled_from(["full", "decorrelated"]),
       st.integers(0, 2**32))
def test_delays_never_exceed_the_cap_nor_go_negative(base, cap, jitter, seed):
    b = Backoff(base, cap, rng=random.Random(seed), jitter=jitter)
    for n in range(40):
        d = b.next()
        assert 0 <= d <= cap
        if jitter == "full":
            assert d <= base * 2 ** n
