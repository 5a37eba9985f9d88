"""dataplane.policy.lb.zone: stay in the local zone while at least ~71% of it is
healthy and not overloaded; otherwise spill over to every zone."""
import random
from dataclasses import dataclass

import pytest

from dataplane.policy.lb.base import Rotation
from dataplane.policy.lb.least_request import LeastRequest
from dataplane.policy.lb.zone import MIN_LOCAL_SHARE, ZoneAware


@dataclass(frozen=True)
class Ep:
    name: str
    zone: str


L = [Ep(f"l{i}", "z1") for i in range(7)]   # local zone z1
R = [Ep(f"r{i}", "z2") for i in range(3)]   # remote zone z2
ALL = L[:4] + R + L[4:]                     # zones interleaved, as a store may list them


def zone_aware(down=(), busy=(), **kw):
    return ZoneAware(Rotation(), "z1", is_healthy=lambda e: e not in down,
                     is_overloaded=lambda e: e in busy, **kw)


def test_healthy_local_zone_takes_all_traffic():
    za = zone_aware()
    assert za.candidates(ALL) == L
    assert {za.pick(ALL) for _ in range(20)} == set(L)
    assert za.spilled == 0


def test_threshold_is_one_over_one_point_four():
    assert MIN_LOCAL_SHARE == pytest.approx(0.714, abs=0.001)
    # 7 local endpoints: ceil(0.714 * 7) = 5 usable ones keep the preference
    assert zone_aware(down=L[:2]).candidates(ALL) == L[2:]
    # 4 usable of 7 (57%) is too few: spill over to every usable endpoint
    za = zone_aware(down=L[:3])
    assert za.candidates(ALL) == [L[3]] + R + L[4:]
    assert za.spilled == 1


def test_overloaded_local_endpoints_count_against_the_zone():
    za = zone_aware(down=L[:1], busy=L[1:3])
    assert za.candidates(ALL) == [L[3]] + R + L[4:]


def test_spill_over_avoids_overloaded_remote_endpoints_too():
    za = zone_aware(down=L, busy=R[:1])
    assert za.candidates(ALL) == R[1:]


def test_when_everything_is_overloaded_healthy_ones_still_serve():
    za = zone_aware(down=L[:6], busy=L[6:] + R)
    assert za.candidates(ALL) == R + L[6:]


def test_nothing_healthy_gives_none():
    za = zone_aware(down=ALL)
    assert za.candidates(ALL) == []
    assert za.pick(ALL) is None


def test_no_local_zone_or_no_local_endpoints_means_no_preference():
    assert ZoneAware(Rotation(), "").candidates(ALL) == ALL
    za = ZoneAware(Rotation(), "z9")
    assert za.candidates(ALL) == ALL
    assert za.spilled == 0  # nothing local to spill from


def test_share_can_be_set():
    # min_local_share=0: one usable local endpoint is enough
    assert zone_aware(down=L[1:], min_local_share=0).candidates(ALL) == [L[0]]
    # min_local_share=1: a single local endpoint down spills over
    assert zone_aware(down=L[:1], min_local_share=1).candidates(ALL) == ALL[1:]
    with pytest.raises(ValueError):
        ZoneAware(Rotation(), "z1", min_local_share=1.5)


def test_preference_returns_when_the_zone_recovers():
    down = set(L[:3])
    za = ZoneAware(Rotation(), "z1", is_healthy=lambda e: e not in down)
    assert set(za.candidates(ALL)) == set(ALL) - down
    down.clear()
    assert za.candidates(ALL) == L


def test_inner_least_request_accounting_goes_through():
    inner = LeastRequest(rng=random.Random(0))
    za = ZoneAware(inner, "z1")
    ep = za.pick(ALL)
    assert ep in L and inner.active(ep) == 1
    za.release(ep)
    assert inner.active(ep) == 0


def test_hash_key_reaches_the_inner_balancer():
    seen = []

    class Spy:
        def pick(self, endpoints, *, key=None):
            seen.append((list(endpoints), key))
            return endpoints[0]

        def release(self, endpoint):
            pass

    assert ZoneAware(Spy(), "z1").pick(ALL, key=b"10.0.0.1") == L[0]
    assert seen == [(L, b"10.0.0.1")]
