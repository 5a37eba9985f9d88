"""Pipes for the splice relay, lent to a direction only while it has bytes in flight.

A long-lived, mostly idle connection (the IM case) must not hold two pipes (four fds and a
pipe_buffer array each) for its whole life. A relay direction takes a pipe when its source
turns readable and gives it back as soon as the pipe is empty again, so pipes scale with the
connections moving bytes at this moment, not with the connections open. Single-threaded: the
forwarder's event loop is the only user.
"""
from dataplane.relay import pump as _pump


class PipePool:
    def __init__(self, keep: int = 64):
        self.keep = keep  # idle pipes kept for reuse; beyond that they are closed
        self.idle = []
        self.lent = 0

    def get(self) -> tuple[int, int]:
        self.lent += 1
        return self.idle.pop() if self.idle else _pump.make_pipe()

    def put(self, pipe: tuple[int, int], empty: bool = True) -> None:
        """Return a pipe; one that may still hold bytes (empty=False) is closed, never reused."""
        self.lent -= 1
        if empty and len(self.idle) < self.keep:
            self.idle.append(pipe)
        else:
            _pump.close_pipe(*pipe)

    def close(self) -> None:
        while self.idle:
            _pump.close_pipe(*self.idle.pop())


POOL = PipePool()
