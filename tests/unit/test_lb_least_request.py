"""dataplane.policy.lb.least_request: power of two choices by active requests per
unit of weight, with pick/release accounting, and a small discrete-event
simulation showing why it beats round robin when one endpoint is slow."""
import heapq
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, strategies as st

from dataplane.policy.lb.base import Rotation
from dataplane.policy.lb.least_request import LeastRequest


@dataclass(frozen=True)
class Ep:
    name: str
    weight: int = 1


def loaded(lr, ep, n):
    """Put n picked-and-unreleased requests on ep, as if picked while alone."""
    for _ in range(n):
        assert lr.pick([ep]) is ep


def test_single_endpoint_is_picked_and_counted():
    lr = LeastRequest(rng=random.Random(0))
    a = Ep("a")
    assert lr.pick([a]) is a and lr.pick([a]) is a
    assert lr.active(a) == 2
    lr.release(a)
    assert lr.active(a) == 1


def test_empty_gives_none_and_counts_nothing():
    lr = LeastRequest(rng=random.Random(0))
    assert lr.pick([]) is None


def test_of_two_the_less_loaded_wins_whatever_the_draw():
    a, b = Ep("a"), Ep("b")
    for seed in range(20):
        lr = LeastRequest(rng=random.Random(seed))
        loaded(lr, a, 3)
        loaded(lr, b, 1)
        assert lr.pick([a, b]) is b
        assert lr.active(b) == 2


def test_the_seeded_draw_decides_which_two_are_compared():
    eps = [Ep(n) for n in "abcd"]
    assert random.Random(6).sample(range(4), 2) == [0, 1]  # a against b
    lr = LeastRequest(rng=random.Random(6))  # loaded() below draws nothing
    loaded(lr, eps[0], 2)
    loaded(lr, eps[1], 1)
    assert lr.pick(eps) is eps[1]  # b (1 active) beats a (2); idle c and d are not seen


def test_weight_divides_the_load():
    heavy, light = Ep("heavy", 4), Ep("light", 1)
    lr = LeastRequest(rng=random.Random(0))
    loaded(lr, heavy, 2)
    # heavy: (2 + 1) / 4 = 0.75 < light: (0 + 1) / 1 = 1
    assert lr.pick([light, heavy]) is heavy
    loaded(lr, heavy, 1)  # heavy now 4 active: 5/4 > 1
    assert lr.pick([heavy, light]) is light


def test_ties_go_to_the_first_drawn():
    a, b = Ep("a", 2), Ep("b", 1)
    rng = random.Random(5)
    first = random.Random(5).sample(range(2), 2)[0]
    lr = LeastRequest(rng=rng)
    loaded(lr, a, 1)  # a: 2/2 = 1, b: 1/1 = 1
    assert lr.pick([a, b]) is [a, b][first]


def test_release_without_pick_raises_and_counts_are_dropped_at_zero():
    lr = LeastRequest(rng=random.Random(0))
    a = Ep("a")
    with pytest.raises(ValueError):
        lr.release(a)
    lr.pick([a])
    lr.release(a)
    assert lr.active(a) == 0 and a not in lr._active
    with pytest.raises(ValueError):
        lr.release(a)


@given(st.lists(st.integers(0, 5), min_size=2, max_size=6), st.integers(0, 2**32))
def test_never_picks_the_single_most_loaded(actives, seed):
    eps = [Ep(str(i)) for i in range(len(actives))]
    lr = LeastRequest(rng=random.Random(seed))
    for e, n in zip(eps, actives):
        loaded(lr, e, n)
    top = max(actives)
    chosen = lr.pick(eps)
    if actives.count(top) == 1:
        assert actives[eps.index(chosen)] < top


# ---- simulation: one of four endpoints is ten times slower -------------------------------------

def simulate(balancer, *, requests=2000, interval=0.005, service=(0.01, 0.01, 0.01, 0.1)):
    """Requests arrive every `interval` seconds of a fake clock; each endpoint
    serves one at a time, first come first served, taking its service time.
    Returns (mean latency, worst queue length seen at any endpoint)."""
    eps = [Ep(f"e{i}") for i in range(len(service))]
    speed = dict(zip(eps, service))
    queue = {e: [] for e in eps}   # arrival times; queue[e][0] is in service
    events = [(i * interval, 0, i, None) for i in range(requests)]  # (time, kind 0=arrive 1=done, seq, ep)
    heapq.heapify(events)
    latencies, worst, seq = [], 0, requests
    while events:
        now, kind, _, ep = heapq.heappop(events)
        if kind == 0:
            ep = balancer.pick(eps)
            queue[ep].append(now)
            worst = max(worst, len(queue[ep]))
            if len(queue[ep]) == 1:
                heapq.heappush(events, (now + speed[ep], 1, seq, ep))
                seq += 1
        else:
            latencies.append(now - queue[ep].pop(0))
            balancer.release(ep)
            if queue[ep]:
                heapq.heappush(events, (now + speed[ep], 1, seq, ep))
                seq += 1
    assert len(latencies) == requests
    return sum(latencies) / requests, worst


def test_least_request_beats_round_robin_when_one_endpoint_is_ten_times_slower():
    # 200 requests/s against capacity 100+100+100+10. Round robin sends the
    # slow endpoint 50/s, five times what it can serve, so its queue grows for
    # the whole run; least request sees that queue and sends elsewhere.
    rr_mean, rr_worst = simulate(Rotation())
    lr_mean, lr_worst = simulate(LeastRequest(rng=random.Random(42)))
    assert rr_worst > 300           # ~400 requests still waiting at the slow one by the end
    assert rr_mean > 2.0            # seconds: a quarter of requests wait in that queue
    assert lr_worst <= 3
    assert lr_mean < 0.025          # about one fast service time, plus some queueing when
                                    # both endpoints drawn are busy
    assert lr_mean * 100 < rr_mean


def test_with_equal_endpoints_least_request_costs_little():
    # Round robin is ideal here: each endpoint gets a request every 20 ms and
    # serves it in 10, so nobody ever waits. P2C sometimes draws two busy
    # endpoints while another is idle, so a few requests wait; the price is
    # small, and it is what buys not herding when many forwarders share endpoints.
    rr_mean, _ = simulate(Rotation(), service=(0.01,) * 4)
    lr_mean, _ = simulate(LeastRequest(rng=random.Random(42)), service=(0.01,) * 4)
    assert rr_mean == pytest.approx(0.01)
    assert 0.01 < lr_mean < 0.0105
