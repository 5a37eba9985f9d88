"""Carries one connection's bytes both ways between two sockets.

Control is asyncio (readiness callbacks); bytes move in a mover (dataplane/movers.py: the
Cython splice pump by default, the plain copy twin when asked), never in a Python loop per
chunk on the default path. The state of a relay is explicit (pending bytes per direction,
half-close, counters) so a later upgrade can hand it, with its sockets, to another process.
"""
import socket

from . import movers
from .sockets import reset

BUDGET = 4 << 20  # bytes per readiness callback, so one busy stream cannot starve the loop


class Direction:
    __slots__ = ("src", "dst", "mover", "bytes", "done", "reading", "writing")

    def __init__(self, src: socket.socket, dst: socket.socket, mover):
        self.src, self.dst, self.mover = src, dst, mover
        self.bytes = 0
        self.done = False
        self.reading = self.writing = False


class Relay:
    """Relays a<->b until both sides are done or one fails (then both are reset).

    Slotted, with `info` a tuple (service, endpoint, trace, source): a forwarder holds one per
    open connection, and the IM case is tens of thousands of them.
    """
    __slots__ = ("loop", "a", "b", "info", "on_close", "closed", "error", "mode", "dirs")

    def __init__(self, loop, a: socket.socket, b: socket.socket, to_b: bytes = b"",
                 to_a: bytes = b"", on_close=None, info: tuple = (), mode: str = "splice"):
        self.loop = loop
        self.a, self.b = a, b
        self.info = info
        self.on_close = on_close
        self.closed = False
        self.error = None
        self.mode = mode
        self.dirs = (Direction(a, b, movers.make(mode, to_b)),
                     Direction(b, a, movers.make(mode, to_a)))

    def start(self) -> None:
        for d in self.dirs:
            self._step(d)

    @property
    def bytes(self):
        return self.dirs[0].bytes, self.dirs[1].bytes

    def _step(self, d: Direction) -> None:
        if self.closed or d.done:
            return
        try:
            moved, status = d.mover.step(d.src.fileno(), d.dst.fileno(), BUDGET)
        except OSError as e:
            self.abort(e)
            return
        d.bytes += moved
        if status & movers.DST_BLOCKED:
            self._read(d, False)
            self._write(d, True)
            return
        self._write(d, False)
        if status & movers.SRC_EOF and d.mover.pending == 0:
            self._read(d, False)
            d.done = True
            try:
                d.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if all(x.done for x in self.dirs):
                self.close()
            return
        self._read(d, True)

    def _read(self, d, on):
        if on and not d.reading:
            self.loop.add_reader(d.src.fileno(), self._step, d)
        elif not on and d.reading:
            self.loop.remove_reader(d.src.fileno())
        d.reading = on

    def _write(self, d, on):
        if on and not d.writing:
            self.loop.add_writer(d.dst.fileno(), self._step, d)
        elif not on and d.writing:
            self.loop.remove_writer(d.dst.fileno())
        d.writing = on

    def _teardown(self):
        self.closed = True
        for d in self.dirs:
            self._read(d, False)
            self._write(d, False)
            d.mover.discard()

    def close(self) -> None:
        if self.closed:
            return
        self._teardown()
        self.a.close()
        self.b.close()
        if self.on_close:
            self.on_close(self)

    def abort(self, error=None) -> None:
        """Reset both sides: a failure on one must not look like a clean end on the other."""
        if self.closed:
            return
        self.error = error
        self._teardown()
        reset(self.a)
        reset(self.b)
        if self.on_close:
            self.on_close(self)
