"""dataplane.policy.lb.ring_hash: consistent hashing. The same key keeps its
endpoint, in this process and any other; when one of N endpoints leaves only
its keys move, about 1/N of them; weights set the shares."""
import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

from hypothesis import given, settings, strategies as st

from dataplane.policy.lb.ring_hash import RingHash, hash64


@dataclass(frozen=True)
class Ep:
    ip: str
    port: int = 80
    weight: int = 1


def eps(n):
    return [Ep(f"198.18.0.{i}") for i in range(1, n + 1)]


def owners(ring, endpoints, keys):
    return {k: ring.pick(endpoints, key=k) for k in keys}


KEYS = [f"10.0.{i // 250}.{i % 250}:{40000 + i}" for i in range(2000)]  # client ip:port


def test_hash64_is_blake2b_and_takes_str_or_bytes():
    want = int.from_bytes(hashlib.blake2b(b"10.0.0.1", digest_size=8).digest(), "big")
    assert hash64("10.0.0.1") == hash64(b"10.0.0.1") == want


def test_same_key_same_endpoint_across_instances_and_seeds():
    a = owners(RingHash(rng=random.Random(1)), eps(5), KEYS[:200])
    b = owners(RingHash(rng=random.Random(2)), list(reversed(eps(5))), KEYS[:200])
    assert a == b


def test_another_process_with_another_hash_seed_agrees():
    code = ("import random; from dataplane.policy.lb.ring_hash import RingHash; "
            "from tests.unit.test_lb_ring_hash import eps, KEYS; "
            "r = RingHash(rng=random.Random(0)); e = eps(5); "
            "print(','.join(r.pick(e, key=k).ip for k in KEYS[:50]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    ring = RingHash(rng=random.Random(9))
    assert out.stdout.strip() == ",".join(ring.pick(eps(5), key=k).ip for k in KEYS[:50])


def test_empty_gives_none():
    assert RingHash(rng=random.Random(0)).pick([], key="k") is None


def test_no_key_takes_a_seeded_random_endpoint():
    e = eps(4)
    r = random.Random(3)
    want = [e[r.randrange(4)] for _ in range(6)]
    ring = RingHash(rng=random.Random(3))
    assert [ring.pick(e) for _ in range(6)] == want
    assert len(set(want)) > 1  # random, not a fixed fallback
    assert ring.builds == 0    # no ring needed without a key


def test_ring_is_rebuilt_only_when_the_endpoints_change():
    ring, e = RingHash(rng=random.Random(0)), eps(3)
    for k in KEYS[:100]:
        ring.pick(e, key=k)
    assert ring.builds == 1
    ring.pick(e[:2], key="x")
    assert ring.builds == 2
    ring.pick(list(e[:2]), key="y")  # an equal list is no change
    assert ring.builds == 2


def test_one_endpoint_is_placed_vnodes_times_weight_points():
    ring = RingHash(rng=random.Random(0), vnodes=7)
    ring.pick([Ep("a", weight=3), Ep("b")], key="k")
    assert Counter(o.ip for o in ring._owners) == {"a": 21, "b": 7}


def test_points_are_scaled_down_above_max_points():
    ring = RingHash(rng=random.Random(0), vnodes=100, max_points=1000)
    ring.pick([Ep("a", weight=30), Ep("b", weight=10)], key="k")
    assert Counter(o.ip for o in ring._owners) == {"a": 750, "b": 250}


def test_weights_set_the_share_of_keys():
    e = [Ep("a"), Ep("b"), Ep("c", weight=2)]
    share = Counter(o.ip for o in owners(RingHash(rng=random.Random(0)), e, KEYS).values())
    assert abs(share["a"] / len(KEYS) - 0.25) < 0.05
    assert abs(share["b"] / len(KEYS) - 0.25) < 0.05
    assert abs(share["c"] / len(KEYS) - 0.50) < 0.05


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 16), st.data())
def test_one_endpoint_leaving_moves_only_its_keys_about_one_in_n(n, data):
    gone = data.draw(st.integers(0, n - 1))
    before_eps = eps(n)
    after_eps = before_eps[:gone] + before_eps[gone + 1:]
    before = owners(RingHash(rng=random.Random(0)), before_eps, KEYS)
    after = owners(RingHash(rng=random.Random(0)), after_eps, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    # Exactly the keys the leaver had move; every other key stays put.
    assert moved == [k for k in KEYS if before[k] == before_eps[gone]]
    assert 0.5 / n < len(moved) / len(KEYS) < 1.5 / n


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 15))
def test_one_endpoint_joining_takes_keys_only_for_itself(n):
    old, new = eps(n), eps(n + 1)
    before = owners(RingHash(rng=random.Random(0)), old, KEYS)
    after = owners(RingHash(rng=random.Random(0)), new, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == new[-1] for k in moved)
    assert 0.5 / (n + 1) < len(moved) / len(KEYS) < 1.5 / (n + 1)
