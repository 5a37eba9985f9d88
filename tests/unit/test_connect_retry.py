"""dataplane.policy.connect_retry: which connect failures are retried, on which
endpoint, after what pause, and when to give up."""
import asyncio
import errno
import random

import pytest

from dataplane.policy.backoff import Backoff
from dataplane.policy.connect_retry import ConnectRetry, classify
from dataplane.policy.retry_budget import RetryBudget


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def fixed():
    return Backoff(0.1, 1.0, jitter="none")


@pytest.mark.parametrize("exc,reason", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
    (TimeoutError(), "timeout"),
    (asyncio.TimeoutError(), "timeout"),
    (OSError(errno.ETIMEDOUT, "timed out"), "timeout"),
    (OSError(errno.EHOSTUNREACH, "no route"), "unreachable"),
    (OSError(errno.ENETUNREACH, "network"), "unreachable"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), "other"),
    (OSError(errno.EMFILE, "too many files"), "other"),
    (ValueError("x"), "other"),
])
def test_classify(exc, reason):
    assert classify(exc) == reason


def test_retries_on_untried_endpoints_with_growing_pauses():
    attempt = ConnectRetry(3, fixed())
    eps = ["a", "b", "c", "d"]
    assert attempt.untried(eps) == eps
    assert attempt.failed("b", "refused") == 0.1
    assert attempt.untried(eps) == ["a", "c", "d"]
    assert attempt.failed("a", "timeout") == 0.2
    assert attempt.failed("d", "unreachable") == 0.4
    assert attempt.untried(eps) == ["c"]
    assert attempt.failed("c", "refused") is None    # 1 attempt + 3 retries used
    assert attempt.gave_up == "attempts"


def test_zero_retries_gives_up_at_once():
    attempt = ConnectRetry(0, fixed())
    assert attempt.failed("a", "refused") is None
    assert attempt.gave_up == "attempts"


def test_other_failures_are_not_retried():
    attempt = ConnectRetry(5, fixed())
    assert attempt.failed("a", "other") is None
    assert attempt.gave_up == "other"


def test_all_tried_means_try_them_again():
    attempt = ConnectRetry(4, fixed())
    attempt.failed("a", "refused")
    attempt.failed("b", "refused")
    assert attempt.untried(["a", "b"]) == ["a", "b"]
    assert attempt.untried([]) == []


def test_jittered_pauses_come_from_the_rng():
    want_rng = random.Random(8)
    want = [want_rng.uniform(0, 0.05), want_rng.uniform(0, 0.1)]
    attempt = ConnectRetry(2, Backoff(0.05, 1.0, rng=random.Random(8)))
    assert [attempt.failed("a", "refused"), attempt.failed("b", "refused")] == want


def test_an_empty_budget_stops_retries():
    budget = RetryBudget(clock=Clock(), ratio=0.5, min_per_second=0, ttl=10)
    budget.record_request()
    budget.record_request()              # one retry allowed in all
    first, second = ConnectRetry(3, fixed(), budget), ConnectRetry(3, fixed(), budget)
    assert first.failed("a", "refused") == 0.1
    assert first.failed("b", "refused") is None
    assert first.gave_up == "budget"
    assert second.failed("a", "refused") is None


def test_negative_retries_are_refused():
    with pytest.raises(ValueError):
        ConnectRetry(-1, fixed())
