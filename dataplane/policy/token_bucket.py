"""A token bucket: the local rate limit on new connections
(RateLimit{tokens_per_second, burst} in config.proto).

The bucket holds at most burst tokens and gains tokens_per_second of them
continuously; each new connection takes one, and a connection that finds
the bucket empty is refused. It starts full, so a quiet service can take a
burst at once while the long-run rate stays bounded: over any span of t
seconds at most burst + rate * t connections get through.

Refill is computed from the injected clock when the bucket is used, so there
is no timer. "Local" means per forwarder: N forwarders admit up to N times
the rate in total, as with Envoy's local_ratelimit filter.
"""
from typing import Callable, Optional

# Floating point slack: 10 tokens/s for 0.1 s must count as a whole token.
_EPS = 1e-9


class TokenBucket:
    def __init__(self, rate: float, burst: Optional[float] = None, *, clock: Callable[[], float]):
        """burst defaults to rate, as config.proto's RateLimit.burst does."""
        burst = rate if burst is None or burst == 0 else burst
        if rate <= 0 or burst < 1:
            raise ValueError("need rate > 0 and burst >= 1")
        self.rate, self.burst = float(rate), float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()
        self.refused = 0  # for stats

    def _refill(self) -> None:
        now = self._clock()
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = max(self._at, now)  # a clock that steps back must not mint tokens later

    def available(self) -> float:
        self._refill()
        return self._tokens

    def try_take(self, n: float = 1) -> bool:
        """Take n tokens if there are that many now; never takes part."""
        self._refill()
        if self._tokens + _EPS >= n:
            self._tokens = max(0.0, self._tokens - n)
            return True
        self.refused += 1
        return False

    def wait_time(self, n: float = 1) -> float:
        """Seconds until n tokens will be there (0 when they are now); inf
        when n exceeds burst and never will be."""
        if n > self.burst:
            return float("inf")
        missing = n - self.available()
        return 0.0 if missing <= _EPS else missing / self.rate
