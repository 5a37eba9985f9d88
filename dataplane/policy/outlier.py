"""Outlier detection: passive health from real connects. An endpoint whose
connects fail consecutive_failures times in a row is ejected (left out of
load balancing) for a while, without waiting for the active health checker.

Rules, one detector per service port (OutlierDetection in config.proto):
- A success resets the endpoint's run of failures; failures while it is
  ejected (connects started before) are ignored.
- Ejection n of an endpoint lasts base_ejection * n, up to max_ejection (300 s
  by default, or base_ejection if that is larger), so an endpoint that keeps
  failing stays out longer each time. The count n decays by one for every
  full base_ejection the endpoint spends back in service, so an endpoint
  that recovered for good starts short again.
- An ejection happens only if, counting it, no more than
  max_ejection_percent of the service's endpoints are ejected:
  (ejected + 1) * 100 <= max_ejection_percent * total. So with the default
  10% a service needs 10 endpoints before any can be ejected, and 0% never
  ejects. We read the cap as a hard bound on the share of capacity passive
  detection may take away; a failure run that the cap stops stays counted
  and ejects on the next failure once the cap has room.
- Ejections end lazily: is_ejected() and healthy() compare with the clock,
  so there is no timer to run. Returning resets the failure run.
"""
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class _State:
    failures: int = 0
    times_ejected: int = 0
    ejected_until: float = None  # None: in service
    back_since: float = 0.0      # when it last returned to service


class OutlierDetector:
    def __init__(self, *, clock: Callable[[], float], consecutive_failures: int = 5,
                 base_ejection: float = 30.0, max_ejection_percent: int = 10,
                 max_ejection: float = 300.0):
        if consecutive_failures < 1 or base_ejection <= 0 or not 0 <= max_ejection_percent <= 100:
            raise ValueError("need consecutive_failures >= 1, base_ejection > 0, percent in 0-100")
        self._clock = clock
        self.consecutive_failures = consecutive_failures
        self.base_ejection = base_ejection
        self.max_ejection_percent = max_ejection_percent
        self.max_ejection = max(max_ejection, base_ejection)
        self._state: dict = {}
        self.ejections = 0  # total, for stats

    def _expire(self, st: _State, now: float) -> None:
        if st.ejected_until is not None and now >= st.ejected_until:
            st.ejected_until, st.back_since, st.failures = None, st.ejected_until, 0

    def is_ejected(self, ep) -> bool:
        st = self._state.get(ep)
        if st is None:
            return False
        self._expire(st, self._clock())
        return st.ejected_until is not None

    def ejected_count(self) -> int:
        now = self._clock()
        for st in self._state.values():
            self._expire(st, now)
        return sum(1 for st in self._state.values() if st.ejected_until is not None)

    def healthy(self, endpoints: Sequence) -> list:
        """endpoints without the ejected ones, in order."""
        return [e for e in endpoints if not self.is_ejected(e)]

    def success(self, ep) -> None:
        st = self._state.get(ep)
        if st is not None:
            st.failures = 0

    def failure(self, ep, *, total: int) -> bool:
        """Count a failed connect to ep, one of total endpoints of the
        service; True when this failure ejected it."""
        now = self._clock()
        st = self._state.setdefault(ep, _State(back_since=now))
        self._expire(st, now)
        if st.ejected_until is not None:
            return False
        st.failures += 1
        if st.failures < self.consecutive_failures:
            return False
        if (self.ejected_count() + 1) * 100 > self.max_ejection_percent * total:
            return False
        decay = int((now - st.back_since) // self.base_ejection) if st.times_ejected else 0
        st.times_ejected = max(0, st.times_ejected - decay) + 1
        st.ejected_until = now + min(self.max_ejection, self.base_ejection * st.times_ejected)
        st.failures = 0
        self.ejections += 1
        return True

    def retain(self, endpoints: Sequence) -> None:
        """Forget endpoints that left the service."""
        keep = set(endpoints)
        self._state = {e: st for e, st in self._state.items() if e in keep}
