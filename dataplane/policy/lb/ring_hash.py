"""Ring hash: the same key goes to the same endpoint, and when one of N
endpoints leaves only about 1/N of the keys move (the ones it had).

The key is what the caller says identifies a client: the source address at
L4, a header or cookie value at L7. Each endpoint is placed on a 64-bit ring
at `vnodes * weight` points, the hash of "name#i" for i below that count; a
key goes to the first point at or after its own hash, wrapping around.
Because an endpoint's points depend only on its own name and weight, adding
or removing an endpoint adds or removes only its points, so every other key
keeps its endpoint. Many points per endpoint keep the arcs even, so each
endpoint's share of keys stays close to its share of the weight.

Hashes are BLAKE2b truncated to 64 bits, never Python's hash(), which is
salted per process: two forwarders must agree on where a key goes. Endpoint
names come from lb.name_of (ip:port), not from the endpoint object, for the
same reason.

The ring is rebuilt only when the endpoints passed in differ from the last
call. A pick without a key has nothing to be consistent about and takes a
random endpoint.

Above max_points the point counts are scaled down to fit; then an endpoint
leaving changes the others' counts too and more than 1/N of keys can move.
With the defaults (100 points per unit of weight, 65536 points) that takes
more than 655 units of weight in one service.
"""
import bisect
import hashlib
import random
from typing import Callable, Sequence

from dataplane.policy.lb.base import name_of as default_name_of, weight_of


def hash64(data) -> int:
    """A stable 64-bit hash of bytes or str (str as UTF-8)."""
    if isinstance(data, str):
        data = data.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RingHash:
    def __init__(self, *, rng: random.Random, weight: Callable[[object], int] = weight_of,
                 name_of: Callable[[object], str] = default_name_of,
                 vnodes: int = 100, max_points: int = 65536):
        if vnodes < 1 or max_points < 1:
            raise ValueError("vnodes and max_points must be at least 1")
        self._rng = rng
        self._weight = weight
        self._name_of = name_of
        self._vnodes = vnodes
        self._max_points = max_points
        self._built_for: tuple = ()
        self._hashes: list[int] = []
        self._owners: list = []
        self.builds = 0  # how many times the ring was built, for tests and stats

    def _build(self, endpoints: Sequence) -> None:
        counts = [self._vnodes * self._weight(e) for e in endpoints]
        total = sum(counts)
        if total > self._max_points:
            counts = [max(1, c * self._max_points // total) for c in counts]
        points = []
        for e, n in zip(endpoints, counts):
            name = self._name_of(e)
            points.extend((hash64(f"{name}#{i}"), name, e) for i in range(n))
        points.sort(key=lambda p: (p[0], p[1]))  # name breaks 64-bit collisions the same everywhere
        self._hashes = [p[0] for p in points]
        self._owners = [p[2] for p in points]
        self._built_for = tuple(endpoints)
        self.builds += 1

    def pick(self, endpoints: Sequence, *, key=None):
        if not endpoints:
            return None
        if key is None:
            return endpoints[self._rng.randrange(len(endpoints))]
        if tuple(endpoints) != self._built_for:
            self._build(endpoints)
        i = bisect.bisect_left(self._hashes, hash64(key))
        return self._owners[i % len(self._owners)]

    def release(self, endpoint) -> None:
        pass
