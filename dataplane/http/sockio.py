"""Waiting on non-blocking sockets from asyncio, for the HTTP proxy's client and upstream sides.

Both helpers are safe to cancel at any await: wait_readable reads nothing, and recv returns only
what one sock.recv call returned, so a cancelled caller loses no data.
"""


def _wake(fut, *_):
    if not fut.done():
        fut.set_result(None)


async def wait_readable(loop, sock, also=None, other=None):
    """Until sock is readable, the task `also` finishes, or the socket `other` is readable.
    Cancelling loses no data: nothing is read here."""
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _wake, fut)
    done = None
    if also is not None:
        done = lambda _task: _wake(fut)  # noqa: E731
        also.add_done_callback(done)
    if other is not None:
        loop.add_reader(other.fileno(), _wake, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)
        if done is not None:
            also.remove_done_callback(done)
        if other is not None:
            loop.remove_reader(other.fileno())


async def recv(loop, sock, n):
    """sock.recv(n) on a non-blocking socket, waiting for readiness; safe to cancel."""
    while True:
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            await wait_readable(loop, sock)
