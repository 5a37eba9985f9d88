"""dataplane.policy.lb.weighted: smooth weighted round robin gives each endpoint
exactly its weight's share over every cycle, spread out rather than bunched."""
from dataclasses import dataclass

from hypothesis import given, strategies as st

from dataplane.policy.lb.weighted import Weighted


@dataclass(frozen=True)
class Ep:
    name: str
    weight: int = 1


A, B, C = Ep("a", 5), Ep("b", 1), Ep("c", 1)


def names(picks):
    return "".join(e.name for e in picks)


def test_nginx_sequence_for_weights_5_1_1():
    w = Weighted()
    assert names(w.pick([A, B, C]) for _ in range(14)) == "aabacaa" * 2


def test_equal_weights_are_plain_round_robin():
    w = Weighted()
    eps = [Ep("a"), Ep("b"), Ep("c")]
    assert names(w.pick(eps) for _ in range(6)) == "abcabc"


def test_heavy_endpoint_never_gets_more_than_its_share_in_a_row():
    # weights 2,1: a never twice in a row more than once per cycle: "aba" repeating
    w = Weighted()
    eps = [Ep("a", 2), Ep("b", 1)]
    assert names(w.pick(eps) for _ in range(9)) == "aba" * 3


def test_empty_gives_none():
    assert Weighted().pick([]) is None


def test_an_endpoint_leaving_keeps_the_others_turns():
    w = Weighted()
    x, y, z = Ep("x", 1), Ep("y", 1), Ep("z", 1)
    assert names(w.pick([x, y, z]) for _ in range(2)) == "xy"
    # Scores now x=-1, y=-1, z=2: z is owed its turn of the first round.
    # y leaves; x and z keep their scores, so z takes that turn and then its own.
    assert names(w.pick([x, z]) for _ in range(6)) == "zzxzxz"


def test_a_new_endpoint_starts_from_zero():
    w = Weighted()
    x, y = Ep("x", 1), Ep("y", 1)
    assert names(w.pick([x]) for _ in range(3)) == "xxx"
    assert names(w.pick([x, y]) for _ in range(4)) == "xyxy"


def test_weight_accessor_is_used():
    # Each cycle of 4 gives q three turns; the tie at the second pick (2, 2)
    # goes to p, the earlier in the list.
    w = Weighted(weight=lambda e: {"p": 1, "q": 3}[e])
    assert "".join(w.pick(["p", "q"]) for _ in range(8)) == "qpqq" * 2


@given(st.lists(st.integers(1, 1000), min_size=1, max_size=8), st.integers(1, 3))
def test_every_cycle_gives_each_endpoint_exactly_its_weight(weights, cycles):
    eps = [Ep(str(i), w) for i, w in enumerate(weights)]
    w = Weighted()
    total = sum(weights)
    for _ in range(cycles):
        picks = [w.pick(eps) for _ in range(total)]
        assert {e: picks.count(e) for e in eps} == {e: e.weight for e in eps}
