"""dataplane.policy.outlier: consecutive connect failures eject an endpoint for a
growing time, never more than the configured share of endpoints at once;
time is a fake clock."""
import pytest
from hypothesis import given, strategies as st

from dataplane.policy.outlier import OutlierDetector


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


EPS = [f"198.18.0.{i}:80" for i in range(10)]


def detector(clock, **kw):
    return OutlierDetector(clock=clock, **{"consecutive_failures": 5, "base_ejection": 30.0,
                                           "max_ejection_percent": 10, **kw})


def fail(od, ep, n, total=10):
    return [od.failure(ep, total=total) for _ in range(n)]


def ejection_length(od, clock, ep):
    """Eject ep now and step the clock 1 s at a time until it returns."""
    assert fail(od, ep, 5)[-1] is True
    start = clock.t
    while od.is_ejected(ep):
        clock.t += 1
    return clock.t - start


def test_fifth_consecutive_failure_ejects():
    od = detector(Clock())
    assert fail(od, EPS[0], 5) == [False, False, False, False, True]
    assert od.is_ejected(EPS[0])
    assert od.healthy(EPS) == EPS[1:]
    assert od.ejections == 1


def test_a_success_resets_the_run():
    od = detector(Clock())
    fail(od, EPS[0], 4)
    od.success(EPS[0])
    assert fail(od, EPS[0], 4) == [False] * 4
    assert not od.is_ejected(EPS[0])
    od.success(EPS[9])  # unknown endpoint: nothing to reset, no error


def test_ejection_ends_after_base_time():
    clock = Clock()
    od = detector(clock)
    fail(od, EPS[0], 5)
    clock.t += 29.999
    assert od.is_ejected(EPS[0])
    clock.t += 0.001
    assert not od.is_ejected(EPS[0])
    assert od.healthy(EPS) == EPS


def test_each_ejection_is_longer_up_to_the_cap():
    clock = Clock()
    od = detector(clock, max_ejection=100.0)
    assert [ejection_length(od, clock, EPS[0]) for _ in range(5)] == [30, 60, 90, 100, 100]


def test_time_back_in_service_shortens_the_next_ejection():
    clock = Clock()
    od = detector(clock)
    # failing again as soon as it returns: 30, 60, 90 s
    assert [ejection_length(od, clock, EPS[0]) for _ in range(3)] == [30, 60, 90]
    clock.t += 45                    # one whole base period back: count 3 -> 2, then +1
    assert ejection_length(od, clock, EPS[0]) == 90
    clock.t += 60                    # two periods: 3 -> 1, then +1
    assert ejection_length(od, clock, EPS[0]) == 60
    clock.t += 1000                  # recovered for good: back to the base time
    assert ejection_length(od, clock, EPS[0]) == 30


def test_failures_while_ejected_are_ignored():
    clock = Clock()
    od = detector(clock)
    fail(od, EPS[0], 5)
    assert fail(od, EPS[0], 20) == [False] * 20
    clock.t += 30
    assert not od.is_ejected(EPS[0])
    assert fail(od, EPS[0], 4) == [False] * 4  # the run restarted on return


def test_at_most_the_configured_share_is_ejected():
    clock = Clock()
    od = detector(clock)                     # 10% of 10 endpoints: one
    fail(od, EPS[0], 5)
    assert fail(od, EPS[1], 7) == [False] * 7
    assert od.ejected_count() == 1 and not od.is_ejected(EPS[1])
    clock.t += 30                            # EPS[0] returns: room for one
    assert od.failure(EPS[1], total=10) is True  # its run was kept counting


@pytest.mark.parametrize("percent,total,ejectable", [
    (10, 3, 0),    # 1 of 3 is 33% > 10%: nothing, rather than a third of capacity
    (0, 100, 0),   # an explicit 0 never ejects
    (34, 3, 1),
    (50, 4, 2),
    (100, 2, 2),
    (10, 25, 2),
])
def test_share_cap(percent, total, ejectable):
    od = detector(Clock(), max_ejection_percent=percent)
    for ep in range(total):
        fail(od, ep, 5, total=total)
    assert od.ejected_count() == ejectable


def test_retain_forgets_departed_endpoints():
    od = detector(Clock())
    fail(od, EPS[0], 5)
    fail(od, EPS[1], 3)
    od.retain(EPS[1:])
    assert od.ejected_count() == 0
    assert fail(od, EPS[1], 2) == [False, True]  # kept endpoints keep their run


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        OutlierDetector(clock=Clock(), consecutive_failures=0)
    with pytest.raises(ValueError):
        OutlierDetector(clock=Clock(), max_ejection_percent=101)


@given(st.integers(0, 100), st.integers(1, 12),
       st.lists(st.tuples(st.integers(0, 11), st.sampled_from(["fail", "ok", "tick"])), max_size=200))
def test_ejected_share_never_exceeds_the_cap(percent, total, ops):
    clock = Clock()
    od = detector(clock, consecutive_failures=2, base_ejection=5.0, max_ejection_percent=percent)
    for i, op in ops:
        ep = i % total
        if op == "fail":
            od.failure(ep, total=total)
        elif op == "ok":
            od.success(ep)
        else:
            clock.t += 3
        assert od.ejected_count() * 100 <= percent * total
        assert len(od.healthy(range(total))) == total - od.ejected_count()
