"""Endpoint choice: the interface every load-balancing policy shares, the
accessors policies read endpoints through, and round robin. The factory that
maps TrafficPolicySpec.load_balancer names to policies is lb/factory.py.

A policy is sans-IO: it is handed the endpoints it may choose from (already
filtered for health and outlier ejection by the caller) and returns one.
One balancer instance serves one service port, because weights, rings and
request counts are per service. Every balancer has release(endpoint), a no-op
except for least-request, so the caller can always pair a successful pick
with a release when the connection or request ends.

Endpoints are whatever objects the caller uses (catalog.Endpoint today);
policies that need a weight, a zone or a stable name read it through the
accessors below, so the catalog can grow those fields without touching the
policies. Each policy module (weighted, least_request, ring_hash, zone)
imports only this one from the package; this one imports none of them.
"""
import random
from typing import Hashable, Optional, Protocol, Sequence


class Balancer(Protocol):
    def pick(self, endpoints: Sequence, *, key=None) -> Optional[object]:
        """One of endpoints, or None when there are none. key is the hash key
        (bytes or str) for ring hash; the other policies ignore it."""

    def release(self, endpoint) -> None:
        """The connection or request that pick() gave endpoint to has ended."""


def weight_of(ep) -> int:
    """EndpointSpec.weight (1-1000); 1 when the endpoint carries none or 0."""
    return max(1, int(getattr(ep, "weight", 1) or 1))


def zone_of(ep) -> str:
    return getattr(ep, "zone", "") or ""


def name_of(ep) -> str:
    """A name for ep that is the same in every forwarder process, so two
    forwarders build the same hash ring: ip:port when the endpoint has them."""
    for host in ("ip", "address"):
        if getattr(ep, host, None) is not None and getattr(ep, "port", None) is not None:
            return f"{getattr(ep, host)}:{ep.port}"
    return str(ep)


class Rotation:
    """Round robin over one service port, as a Balancer. The first pick starts
    at a random offset (when given rng) so that forwarders started together
    do not all send their first connection to the same endpoint."""

    def __init__(self, rng: Optional[random.Random] = None):
        self._next = None if rng is not None else 0
        self._rng = rng

    def pick(self, endpoints: Sequence, *, key=None):
        if not endpoints:
            return None
        if self._next is None:
            self._next = self._rng.randrange(len(endpoints))
        i = self._next % len(endpoints)
        self._next = i + 1
        return endpoints[i]

    def release(self, endpoint) -> None:
        pass


class RoundRobin:
    """Round robin keyed by service port, the forwarder's original policy:
    pick(key, endpoints). Kept for the forwarder; new code takes one Balancer
    per service port from factory.make_balancer()."""

    def __init__(self):
        self._turns: dict[Hashable, Rotation] = {}

    def pick(self, key, endpoints: list):
        """The next endpoint of key in turn; None when there are none."""
        if not endpoints:
            return None
        return self._turns.setdefault(key, Rotation()).pick(endpoints)

