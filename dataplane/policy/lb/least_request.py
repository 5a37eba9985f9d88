"""Least request by the power of two choices (P2C).

Pick two distinct endpoints at random and take the one with fewer active
requests (connections at L4) per unit of weight. Comparing two random
endpoints instead of scanning for the global minimum avoids the herd effect:
every forwarder would otherwise send its next connections to the same idle
endpoint, because each sees only its own counts and they all agree on which
is least loaded. Two random choices already bring the load of the busiest
endpoint down exponentially compared with one (Mitzenmacher 2001), which is
why Envoy and linkerd2-proxy's balance crate use it.

Load of an endpoint is (active + 1) / weight: the +1 makes a weight-10 idle
endpoint beat a weight-1 idle one, and a weight-2 endpoint with one request
tie with an idle weight-1 one. Ties go to the first of the two drawn.

Accounting: pick() counts one request started on the endpoint it returns;
the caller calls release(endpoint) exactly once when that request or
connection ends (success or failure). Counts live per endpoint object and go
away when they reach zero, so endpoints that left the service do not leak.
"""
import random
from typing import Callable, Sequence

from dataplane.policy.lb.base import weight_of


class LeastRequest:
    def __init__(self, *, rng: random.Random, weight: Callable[[object], int] = weight_of):
        self._rng = rng
        self._weight = weight
        self._active: dict = {}

    def active(self, endpoint) -> int:
        """Requests picked for endpoint and not yet released."""
        return self._active.get(endpoint, 0)

    def _load(self, e) -> float:
        return (self._active.get(e, 0) + 1) / self._weight(e)

    def pick(self, endpoints: Sequence, *, key=None):
        if not endpoints:
            return None
        if len(endpoints) == 1:
            chosen = endpoints[0]
        else:
            i, j = self._rng.sample(range(len(endpoints)), 2)
            a, b = endpoints[i], endpoints[j]
            chosen = b if self._load(b) < self._load(a) else a
        self._active[chosen] = self._active.get(chosen, 0) + 1
        return chosen

    def release(self, endpoint) -> None:
        """One request on endpoint ended. Releasing more than was picked is a
        caller bug, reported rather than letting the count go negative and
        attract every new request to that endpoint."""
        n = self._active.get(endpoint, 0)
        if n <= 0:
            raise ValueError(f"release of {endpoint!r} without a matching pick")
        if n == 1:
            del self._active[endpoint]
        else:
            self._active[endpoint] = n - 1
