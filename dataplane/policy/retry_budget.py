"""A retry budget: retries may add at most a set share to the traffic, so
that when a service starts failing, retries cannot multiply its load (a
retry storm). Per-request attempt limits alone do not do this: with 3
attempts each, a failing service gets three times its normal load just when
it can least take it. Linkerd's retry budget (tower's TpsBudget) works along
the same lines.

Over a sliding window of ttl seconds:
  allowed retries = min_per_second * ttl + ratio * requests in the window
A retry is allowed (and counted) when, counting it, the retries in the window
stay within that: the allowance is rounded down, 3.9 allows 3.
The bound holds as each retry is admitted, not for every later window: retries
keep counting after the requests that earned them have left, so a window may
then hold more retries than its own requests allow, and it admits no retry
until it is back within (as in tower's budget, and by design: a budget cannot
take back a retry already sent).
min_per_second keeps a trickle of retries possible for a service
with little traffic, where one failed request would otherwise get no retry.

The window is kept as `slots` buckets of ttl/slots seconds each, so memory is
fixed and a count leaves the window at most ttl/slots late. Requests are the
original ones only; a retry counts as a retry, not as a request, or retries
would earn more retries.
"""
from collections import deque
from typing import Callable


class RetryBudget:
    def __init__(self, *, clock: Callable[[], float], ratio: float = 0.2,
                 min_per_second: float = 10.0, ttl: float = 10.0, slots: int = 10):
        if ratio < 0 or min_per_second < 0 or ttl <= 0 or slots < 1:
            raise ValueError("need ratio >= 0, min_per_second >= 0, ttl > 0, slots >= 1")
        self._clock = clock
        self.ratio, self.min_per_second, self.ttl = ratio, min_per_second, ttl
        self._slots = slots
        self._width = ttl / slots
        self._window: deque = deque()  # [slot number, requests, retries], oldest first
        self.refused = 0  # for stats

    def _current(self) -> list:
        slot = int(self._clock() // self._width)
        while self._window and self._window[0][0] <= slot - self._slots:
            self._window.popleft()
        if not self._window or self._window[-1][0] < slot:
            self._window.append([slot, 0, 0])
        return self._window[-1]  # a clock stepping back keeps counting in the newest slot

    def _totals(self) -> tuple[int, int]:
        self._current()
        return sum(s[1] for s in self._window), sum(s[2] for s in self._window)

    def record_request(self) -> None:
        """Count one original request (or new connection at L4)."""
        self._current()[1] += 1

    def allowed(self) -> float:
        """How many retries the window allows in all, used or not."""
        requests, _ = self._totals()
        return self.min_per_second * self.ttl + self.ratio * requests

    def try_retry(self) -> bool:
        """Spend one retry if the budget has room; False means do not retry."""
        requests, retries = self._totals()
        # Counting this one, retries stay within the allowance. The slack
        # lets 0.29 * 100 = 28.999999999999996 and its like count as whole.
        if retries + 1 <= self.min_per_second * self.ttl + self.ratio * requests + 1e-9:
            self._current()[2] += 1
            return True
        self.refused += 1
        return False
