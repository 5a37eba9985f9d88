"""Polling with a deadline, for tests that wait for a state instead of sleeping a fixed time."""
import asyncio
import time
from typing import Callable

TIMEOUT = 30.0  # generous: a deadline for what should happen, never a pass/fail timing


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "the condition",
               interval: float = 0.01):
    """Call predicate until it returns something truthy and return that; AssertionError naming
    what was awaited if the deadline passes first. Exceptions from predicate propagate."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], object], timeout: float = TIMEOUT,
                           what: str = "the condition", interval: float = 0.01):
    """wait_until inside an event loop: the loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
