"""The idle timeout of a relayed connection (TrafficPolicySpec.idle_timeout_ms)
as a deadline, with no timer of its own.

The relay paths differ in what they can see: the asyncio twin sees every
read, but the kernel and splice paths move bytes without the forwarder
looking. So activity is told either way: activity() from a path that sees
reads, or observe(counter) from one that polls a byte counter now and then,
which counts as activity only when the counter moved. The owner of the
connection asks remaining() to know how long to sleep before asking
expired() again, and closes both sides once it is True.

A timeout of 0 means none, as an omitted proto field reads.
"""
from typing import Callable


class IdleTimer:
    def __init__(self, timeout: float, *, clock: Callable[[], float]):
        if timeout < 0:
            raise ValueError("timeout must be >= 0")
        self.timeout = timeout
        self._clock = clock
        self._last = clock()
        self._counter = 0  # a relay starts with nothing moved

    def activity(self) -> None:
        """Bytes moved just now."""
        self._last = self._clock()

    def observe(self, counter: int) -> None:
        """A polled count of bytes moved so far; activity when it changed."""
        if counter != self._counter:
            self._counter = counter
            self._last = self._clock()

    def remaining(self) -> float:
        """Seconds until the connection counts as idle; inf without a timeout."""
        if not self.timeout:
            return float("inf")
        return max(0.0, self._last + self.timeout - self._clock())

    def expired(self) -> bool:
        return self.remaining() == 0.0
