"""The load-balancing policy a TrafficPolicySpec.load_balancer name stands for.

Apart from the policies (lb/base.py and one module per policy) so that they can
import lb/base.py's helpers without a cycle.
"""
import random

from dataplane.policy.lb.base import Balancer, Rotation, name_of, weight_of
from dataplane.policy.lb.least_request import LeastRequest
from dataplane.policy.lb.ring_hash import RingHash
from dataplane.policy.lb.weighted import Weighted

NAMES = ("round_robin", "weighted", "least_request", "ring_hash")


def make_balancer(name: str, *, rng: random.Random, weight=weight_of, name_of=name_of) -> Balancer:
    """The policy TrafficPolicySpec.load_balancer names ("" is round_robin).
    No policy reads the time, so there is no clock here; rng drives every
    random choice so tests can seed it."""
    if name in ("", "round_robin"):
        return Rotation(rng)
    if name == "weighted":
        return Weighted(weight=weight)
    if name == "least_request":
        return LeastRequest(rng=rng, weight=weight)
    if name == "ring_hash":
        return RingHash(rng=rng, weight=weight, name_of=name_of)
    raise ValueError(f"unknown load balancer {name!r}; one of {', '.join(NAMES)}")
