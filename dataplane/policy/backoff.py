"""Exponential backoff with jitter, for the pause between retried connects.

Without jitter, clients that failed together retry together and hit the
recovering endpoint in waves; jitter spreads them out. Two kinds, as in the
AWS architecture note "Exponential Backoff And Jitter" that linkerd2-proxy's
exp-backoff crate also follows:

  full:          delay n = uniform(0, min(cap, base * 2**n))
  decorrelated:  delay n = min(cap, uniform(base, 3 * previous delay)),
                 starting from previous = base
  none:          delay n = min(cap, base * 2**n)   (for tests and tooling)

n counts from 0 for the first retry. One Backoff is one sequence of retries
(one connection's attempts); reset() starts over. Times are seconds.
"""
import random
from typing import Optional

JITTERS = ("full", "decorrelated", "none")


class Backoff:
    def __init__(self, base: float, cap: float, *, rng: Optional[random.Random] = None,
                 jitter: str = "full"):
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        if jitter not in JITTERS:
            raise ValueError(f"jitter must be one of {', '.join(JITTERS)}")
        if jitter != "none" and rng is None:
            raise ValueError(f"{jitter} jitter needs an rng")
        self.base, self.cap, self.jitter = base, cap, jitter
        self._rng = rng
        self.reset()

    def reset(self) -> None:
        self.attempt = 0
        self._previous = self.base

    def ceiling(self, attempt: int) -> float:
        """The exponential bound for retry number attempt, capped."""
        # 2**attempt grows without bound; compare before multiplying past cap.
        if attempt >= 64:
            return self.cap
        return min(self.cap, self.base * (1 << attempt))

    def next(self) -> float:
        """The delay before the next retry, and count that retry."""
        n = self.attempt
        self.attempt += 1
        if self.jitter == "none":
            return self.ceiling(n)
        if self.jitter == "full":
            return self._rng.uniform(0, self.ceiling(n))
        delay = min(self.cap, self._rng.uniform(self.base, self._previous * 3))
        self._previous = delay
        return delay
