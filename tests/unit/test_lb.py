"""dataplane.lb.RoundRobin: endpoints in turn, one rotation per key."""
from dataplane.lb import RoundRobin


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
