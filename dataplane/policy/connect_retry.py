"""Retrying a failed upstream connect on another endpoint: which failures are
worth a retry, how many, how long to wait, and which endpoints are left.

A refused or timed-out connect says nothing about the other endpoints of
the service, and nothing has reached the app yet, so trying another
endpoint is safe and usually succeeds. Bounds keep that from making things
worse: at most `retries` retries after the first attempt
(TrafficPolicySpec.retry_attempts, 0-10), a jittered exponential pause
between them (backoff.Backoff), and, when given, a RetryBudget shared by the
service so retries stay a small share of its connections.

One ConnectRetry serves one downstream connection. The caller's loop:
  attempt = ConnectRetry(retries, Backoff(...), budget)
  while True:
      ep = balancer.pick(attempt.untried(healthy_endpoints))
      try: connect to ep; break
      except OSError as e:
          delay = attempt.failed(ep, classify(e))
          if delay is None: give up
          await asyncio.sleep(delay)
budget.record_request() is the caller's, once per downstream connection.
"""
import asyncio
import errno
from typing import Optional, Sequence

from dataplane.policy.backoff import Backoff
from dataplane.policy.retry_budget import RetryBudget

# Failures where the connect surely did not reach the app, so a retry on
# another endpoint cannot duplicate anything.
RETRIABLE = frozenset({"refused", "timeout", "unreachable"})

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


def classify(exc: BaseException) -> str:
    """A connect failure's reason: refused, timeout, unreachable or other."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return "timeout"
    return "other"


class ConnectRetry:
    def __init__(self, retries: int, backoff: Backoff, budget: Optional[RetryBudget] = None):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries = retries
        self._backoff = backoff
        self._budget = budget
        self.tried: list = []      # endpoints in the order they failed
        self.gave_up: str = ""     # why failed() returned None: reason, "attempts" or "budget"

    def untried(self, endpoints: Sequence) -> list:
        """endpoints not tried yet; all of them when every one was, so a
        service with fewer endpoints than attempts still retries."""
        left = [e for e in endpoints if e not in self.tried]
        return left or list(endpoints)

    def failed(self, endpoint, reason: str) -> Optional[float]:
        """Record a failed connect to endpoint; the seconds to wait before
        the next attempt, or None to give up."""
        self.tried.append(endpoint)
        if reason not in RETRIABLE:
            self.gave_up = reason
            return None
        if len(self.tried) > self.retries:
            self.gave_up = "attempts"
            return None
        if self._budget is not None and not self._budget.try_retry():
            self.gave_up = "budget"
            return None
        return self._backoff.next()
