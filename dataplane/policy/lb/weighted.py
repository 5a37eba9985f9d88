"""Weighted round robin, smooth (the nginx algorithm).

Each pick adds every endpoint's weight to its running score, takes the
endpoint with the highest score and subtracts the total weight from it. Over
any run of total-weight picks each endpoint is chosen exactly weight times,
and the heavy endpoint's turns are spread out (weights 5,1,1 give
a a b a c a a) instead of coming in a burst that would land five new
connections on one endpoint back to back.

Why not EDF (Envoy's choice): for the endpoint counts of one service port
(tens) the O(n) scan costs less than a heap in Python, and the exact
sequence makes the policy testable by value.

Scores are kept per endpoint across calls. An endpoint that joins starts at
0; one that leaves takes its score with it, so the survivors' order is not
disturbed by a change in the set.
"""
from typing import Callable, Sequence

from dataplane.policy.lb.base import weight_of


class Weighted:
    def __init__(self, *, weight: Callable[[object], int] = weight_of):
        self._weight = weight
        self._score: dict = {}

    def pick(self, endpoints: Sequence, *, key=None):
        if not endpoints:
            return None
        if len(self._score) > len(endpoints) or any(e not in self._score for e in endpoints):
            self._score = {e: self._score.get(e, 0) for e in endpoints}
        total, best, best_score = 0, None, None
        for e in endpoints:
            w = self._weight(e)
            total += w
            s = self._score[e] + w
            self._score[e] = s
            if best_score is None or s > best_score:  # ties: earliest in the list
                best, best_score = e, s
        self._score[best] -= total
        return best

    def release(self, endpoint) -> None:
        pass
