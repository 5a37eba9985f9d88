"""dataplane.policy.lb.base: RoundRobin (endpoints in turn, one rotation per key, as the
forwarder uses it) and the Balancer interface; dataplane.policy.lb.factory."""
import random
from dataclasses import dataclass

import pytest

from dataplane.store.catalog import Endpoint
from dataplane.policy.lb.base import Rotation, RoundRobin, name_of, weight_of, zone_of
from dataplane.policy.lb.factory import NAMES, make_balancer
from dataplane.policy.lb.least_request import LeastRequest
from dataplane.policy.lb.ring_hash import RingHash
from dataplane.policy.lb.weighted import Weighted


def test_cycles_through_the_endpoints_in_order():
    rr = RoundRobin()
    assert [rr.pick("web:80", ["a", "b", "c"]) for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_keys_rotate_independently():
    rr = RoundRobin()
    assert rr.pick("web:80", ["a", "b"]) == "a"
    assert rr.pick("web:80", ["a", "b"]) == "b"
    assert rr.pick("db:5432", ["x", "y", "z"]) == "x"
    assert rr.pick(("web", 443), ["a", "b"]) == "a"
    assert rr.pick("web:80", ["a", "b"]) == "a"
    assert rr.pick("db:5432", ["x", "y", "z"]) == "y"


def test_no_endpoints_gives_none_and_keeps_the_turn():
    rr = RoundRobin()
    assert rr.pick("k", []) is None
    assert rr.pick("k", None) is None
    assert rr.pick("k", ["a", "b"]) == "a"
    assert rr.pick("k", []) is None
    assert rr.pick("k", ["a", "b"]) == "b"


def test_single_endpoint_always_chosen():
    rr = RoundRobin()
    assert {rr.pick("k", ["only"]) for _ in range(5)} == {"only"}


def test_list_shrinks_between_picks():
    rr = RoundRobin()
    assert [rr.pick("k", ["a", "b", "c", "d"]) for _ in range(3)] == ["a", "b", "c"]
    # Turn 3 of a 2-endpoint list wraps to index 1; no IndexError, always a member.
    assert rr.pick("k", ["a", "b"]) == "b"
    assert rr.pick("k", ["a", "b"]) == "a"
    assert rr.pick("k", ["a"]) == "a"


def test_list_grows_between_picks():
    rr = RoundRobin()
    assert rr.pick("k", ["a"]) == "a"
    assert [rr.pick("k", ["a", "b", "c"]) for _ in range(3)] == ["b", "c", "a"]


def test_every_endpoint_gets_an_equal_share():
    rr = RoundRobin()
    eps = ["a", "b", "c"]
    picks = [rr.pick("k", eps) for _ in range(300)]
    assert {e: picks.count(e) for e in eps} == {"a": 100, "b": 100, "c": 100}


# ---- the Balancer interface and the factory ----------------------------------------------------


def test_rotation_without_rng_starts_at_the_first_endpoint():
    r = Rotation()
    assert [r.pick(["a", "b", "c"]) for _ in range(4)] == ["a", "b", "c", "a"]
    assert r.pick([]) is None


def test_rotation_with_rng_starts_at_a_seeded_random_offset():
    # random.Random(7).randrange(5) is 2: the first pick is the third endpoint.
    assert random.Random(7).randrange(5) == 2
    r = Rotation(random.Random(7))
    assert [r.pick("abcde") for _ in range(6)] == ["c", "d", "e", "a", "b", "c"]


def test_rotation_ignores_the_hash_key():
    r = Rotation()
    assert [r.pick(["a", "b"], key="same") for _ in range(3)] == ["a", "b", "a"]


def test_release_is_accepted_by_every_policy():
    for name in NAMES:
        b = make_balancer(name, rng=random.Random(1))
        ep = b.pick(["a", "b"], key="k")
        assert ep in ("a", "b")
        b.release(ep)


def test_factory_maps_config_names_to_policies():
    rng = random.Random(1)
    assert type(make_balancer("", rng=rng)) is Rotation
    assert type(make_balancer("round_robin", rng=rng)) is Rotation
    assert type(make_balancer("weighted", rng=rng)) is Weighted
    assert type(make_balancer("least_request", rng=rng)) is LeastRequest
    assert type(make_balancer("ring_hash", rng=rng)) is RingHash
    with pytest.raises(ValueError, match="maglev"):
        make_balancer("maglev", rng=rng)


def test_factory_passes_the_weight_accessor():
    b = make_balancer("weighted", rng=random.Random(1), weight={"a": 3, "b": 1}.get)
    assert [b.pick(["a", "b"]) for _ in range(4)] == ["a", "a", "b", "a"]


@dataclass(frozen=True)
class _Spec:
    address: str
    port: int
    weight: int = 0
    zone: str = ""


def test_accessors_read_catalog_endpoints_and_specs():
    ep = Endpoint("web-1", "n1", "198.18.0.5", 8080)
    assert name_of(ep) == "198.18.0.5:8080"
    assert weight_of(ep) == 1 and zone_of(ep) == ""
    spec = _Spec("198.18.0.6", 80, weight=7, zone="z1")
    assert name_of(spec) == "198.18.0.6:80"
    assert weight_of(spec) == 7 and zone_of(spec) == "z1"
    assert weight_of(_Spec("a", 1, weight=0)) == 1  # proto default 0 reads as 1
    assert name_of("plain") == "plain"
