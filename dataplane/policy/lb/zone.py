"""Zone-aware preference: keep traffic in the forwarder's own zone while
that zone can take it, spill over to every zone when it cannot.

Cross-zone traffic costs latency and, in clouds, money, so the local zone is
preferred. But sending everything to a local zone that has lost most of its
endpoints would overload the few left, so the preference holds only while
enough of it is usable.

The rule, applied on every pick to the endpoints of one service port:
  usable(e)  = is_healthy(e) and not is_overloaded(e)
  local      = endpoints whose zone is local_zone
  if local and usable(local) >= min_local_share * len(local) (and >= 1):
      choose among usable(local)
  else if any endpoint is usable:
      choose among usable(all zones)        # spill over, local ones included
  else:
      choose among healthy(all zones)       # overload is a soft signal
min_local_share defaults to 1/1.4 (about 71%), the share at which Envoy's
default overprovisioning factor of 1.4 stops treating a locality as fully
available. An empty local_zone, or no endpoint in it, means no preference.

The choice among the candidates is made by one inner Balancer, shared by both
branches, so least-request counts and round-robin turns carry over when the
preference flips. Health is passed in as a predicate rather than by
pre-filtering, because the rule needs to see the unhealthy local endpoints to
know the local zone's share.
"""
import math
from typing import Callable, Sequence

from dataplane.policy.lb.base import Balancer, zone_of as default_zone_of

MIN_LOCAL_SHARE = 1 / 1.4


def _always(_e) -> bool:
    return True


def _never(_e) -> bool:
    return False


class ZoneAware:
    def __init__(self, inner: Balancer, local_zone: str, *,
                 zone_of: Callable[[object], str] = default_zone_of,
                 is_healthy: Callable[[object], bool] = _always,
                 is_overloaded: Callable[[object], bool] = _never,
                 min_local_share: float = MIN_LOCAL_SHARE):
        if not 0 <= min_local_share <= 1:
            raise ValueError("min_local_share must be between 0 and 1")
        self.inner = inner
        self.local_zone = local_zone
        self._zone_of = zone_of
        self._healthy = is_healthy
        self._overloaded = is_overloaded
        self._share = min_local_share
        self.spilled = 0  # picks that left the local zone although it had endpoints

    def candidates(self, endpoints: Sequence) -> list:
        """The endpoints the rule allows, in their given order."""
        healthy = [e for e in endpoints if self._healthy(e)]
        usable = [e for e in healthy if not self._overloaded(e)]
        if self.local_zone:
            local_total = sum(1 for e in endpoints if self._zone_of(e) == self.local_zone)
            if local_total:
                local = [e for e in usable if self._zone_of(e) == self.local_zone]
                if local and len(local) >= math.ceil(self._share * local_total - 1e-9):
                    return local
                self.spilled += 1
        return usable or healthy

    def pick(self, endpoints: Sequence, *, key=None):
        return self.inner.pick(self.candidates(endpoints), key=key)

    def release(self, endpoint) -> None:
        self.inner.release(endpoint)
