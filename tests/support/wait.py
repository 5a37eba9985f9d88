"""Waiting in tests: polling for a state with a deadline instead of sleeping a fixed time, running
a coroutine under a deadline, and checking timeouts by order on the loop's clock, never by wall clock."""
import asyncio
import time
from typing import Callable

TIMEOUT = 30.0  # generous: a deadline for what should happen, never a pass/fail timing


def _check(predicate: Callable[[], object], deadline: float, timeout: float, what: str):
    """predicate's value if truthy, else None; AssertionError naming what once deadline passed."""
    got = predicate()
    if not got and time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
    return got


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "the condition",
               interval: float = 0.01):
    """Call predicate until it returns something truthy and return that; AssertionError naming
    what was awaited if the deadline passes first. Exceptions from predicate propagate."""
    deadline = time.monotonic() + timeout
    while not (got := _check(predicate, deadline, timeout, what)):
        time.sleep(interval)
    return got


def run(coro, timeout: float = TIMEOUT):
    """asyncio.run(coro) with a deadline on the whole of it."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until_async(predicate: Callable[[], object], timeout: float = TIMEOUT,
                           what: str = "the condition", interval: float = 0.01):
    """wait_until inside an event loop: the loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while not (got := _check(predicate, deadline, timeout, what)):
        await asyncio.sleep(interval)
    return got


# Timeouts checked by order, not by wall clock: timers on one loop fire in deadline order, so a
# timer set before the code under test sets its own is due first under any load.

async def ends_after(coro, earlier: float):
    """Await coro, asserting it was still running when a timer set `earlier` seconds from
    now fired: timers on one loop fire in deadline order, so this is exact under any load."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    at_earlier = loop.create_future()
    loop.call_later(earlier, lambda: at_earlier.set_result(task.done()))
    assert await at_earlier is False, f"ended before {earlier} s"
    return await task


async def ends_before(coro, later: float):
    """Await coro, asserting it ended before a timer set `later` seconds from now fired (the
    coroutine is cancelled if not). For "at once" or "at its deadline, not at a far one": give
    the code under test a deadline well short of `later`, or none it would have to wait for."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(coro)
    alarm = loop.create_future()
    handle = loop.call_later(later, alarm.set_result, None)
    await asyncio.wait({task, alarm}, return_when=asyncio.FIRST_COMPLETED)
    handle.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise AssertionError(f"still running after {later} s")
    return task.result()
