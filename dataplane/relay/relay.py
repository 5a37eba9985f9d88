"""Carries one connection's bytes both ways between two sockets.

Control is asyncio (readiness from one epoll for all relays, dataplane/relay/poller.py); bytes
move in a mover (dataplane/relay/movers.py: the Cython splice pump by default, the plain copy twin
when asked), never in a Python loop per chunk on the default path. The state of a relay is explicit (pending bytes per direction,
half-close, counters) so a later upgrade can hand it, with its sockets, to another process.
"""
import socket

from dataplane.relay import movers
from dataplane.relay.poller import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT
from dataplane.host.sockets import reset

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

    Readiness comes from a Poller (dataplane/relay/poller.py) shared by every relay of the
    forwarder. Slotted, with `info` a tuple (service, endpoint, trace, source): a forwarder
    holds one relay per open connection, and the IM case is tens of thousands of them.
    """
    __slots__ = ("poller", "a", "b", "fa", "fb", "masks", "info", "on_close", "closed",
                 "error", "mode", "dirs")

    def __init__(self, poller, a: socket.socket, b: socket.socket, to_b: bytes = b"",
                 to_a: bytes = b"", on_close=None, info: tuple = (), mode: str = "splice",
                 pool=None):
        self.poller = poller
        self.a, self.b = a, b
        self.fa, self.fb = a.fileno(), b.fileno()
        self.masks = [0, 0]  # epoll events asked for a and for b
        self.info = info
        self.on_close = on_close
        self.closed = False
        self.error = None
        self.mode = mode
        self.dirs = (Direction(a, b, movers.make(mode, to_b, pool)),
                     Direction(b, a, movers.make(mode, to_a, pool)))

    def start(self) -> None:
        for d in self.dirs:
            if d.mover.pending:  # bytes read ahead (a preamble's leftover) go out first
                self._step(d)
            else:  # level-triggered: bytes already queued are reported at once
                self._read(d, True)

    @property
    def bytes(self):
        return self.dirs[0].bytes, self.dirs[1].bytes

    def event(self, fd: int, events: int) -> None:
        """Readiness of one of our sockets: run the directions it concerns."""
        if self.closed:
            return
        side = 0 if fd == self.fa else 1
        src_of, dst_of = self.dirs[side], self.dirs[1 - side]  # reads fd / writes fd
        if dst_of.writing and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
            self._step(dst_of)
        if src_of.reading and not self.closed and events & (EPOLLIN | EPOLLERR | EPOLLHUP):
            self._step(src_of)

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

    def _watch(self, side: int) -> None:
        """Ask epoll for what the two directions now need of socket `side`."""
        src_of, dst_of = self.dirs[side], self.dirs[1 - side]
        mask = (EPOLLIN if src_of.reading else 0) | (EPOLLOUT if dst_of.writing else 0)
        if mask != self.masks[side]:
            self.poller.set(self.fa if side == 0 else self.fb, self, self.masks[side], mask)
            self.masks[side] = mask

    def _read(self, d, on):
        if d.reading != on:
            d.reading = on
            self._watch(0 if d is self.dirs[0] else 1)

    def _write(self, d, on):
        if d.writing != on:
            d.writing = on
            self._watch(1 if d is self.dirs[0] else 0)

    def _teardown(self):
        self.closed = True
        for side, fd in enumerate((self.fa, self.fb)):
            self.poller.set(fd, self, self.masks[side], 0)
            self.masks[side] = 0
        for d in self.dirs:
            d.reading = d.writing = False
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
