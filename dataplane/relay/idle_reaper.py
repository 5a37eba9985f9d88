"""Finding relayed connections idle past their service's idle timeout
(TrafficPolicySpec.idle_timeout_ms).

The kernel and splice relay paths move bytes without the forwarder seeing
them, so idleness is found by polling: the forwarder calls scan() now and
then (every interval() seconds) with its relays, and each relay's byte
counters (Relay.bytes, both directions) feed an idle_timer.IdleTimer. A relay
is watched from the first scan that sees it, so a connection idle from the
start is closed between timeout and timeout + interval after that scan.
Sans-IO: anything with `bytes` (a pair of counts) and `info` (service first)
is a relay here; the caller closes what scan() returns.
"""
from typing import Callable, Iterable

from dataplane.relay.idle_timer import IdleTimer

MAX_INTERVAL = 1.0
MIN_INTERVAL = 0.1


class IdleReaper:
    def __init__(self, *, clock: Callable[[], float]):
        self._clock = clock
        self._timers: dict = {}  # relay -> IdleTimer, for relays whose service has a timeout

    def scan(self, relays: Iterable, timeout_of: Callable[[str], float]) -> list:
        """The relays idle for longer than timeout_of(their service); forgets
        relays that are gone or whose service no longer has a timeout."""
        timers, idle = {}, []
        for r in relays:
            timeout = timeout_of(r.info[0]) if r.info else 0
            if not timeout:
                continue
            t = self._timers.get(r)
            if t is None:
                t = IdleTimer(timeout, clock=self._clock)
            t.timeout = timeout  # a changed policy applies to open connections too
            a, b = r.bytes
            t.observe(a + b)
            if t.expired():
                idle.append(r)
            else:
                timers[r] = t
        self._timers = timers
        return idle

    def watched(self) -> int:
        return len(self._timers)


def interval(timeouts: Iterable[float]) -> float:
    """How often to scan: a quarter of the shortest timeout, within 0.1-1 s."""
    shortest = min((t for t in timeouts if t), default=0)
    if not shortest:
        return MAX_INTERVAL
    return max(MIN_INTERVAL, min(MAX_INTERVAL, shortest / 4))
