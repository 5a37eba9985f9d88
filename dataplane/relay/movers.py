"""How one relay direction moves bytes: the splice pump, the copy loop, or the two by need.

The movers have the same interface and the status bits of dataplane/relay/pump_py.py:

    step(src_fd, dst_fd, budget) -> (moved, status)   status: 0, SRC_EOF, DST_BLOCKED or
                                                      SRC_DRAINED; errors raise OSError
    pending                                           bytes read from src, not yet written
    release(), discard()                              give buffers back (drained / on abort)

- "splice": src -> pipe -> dst with splice(2) in the Cython pump (or its Python twin); the
  bytes never enter userspace. The pipe comes from dataplane.relay.pipes.POOL only while bytes are
  in flight.
- "auto" (the default in the event loop): copy while a direction's messages are small, splice
  for good once it carries bulk (AutoMover: the faster of the two for each, as measured; the
  relay engine, the forwarder's default relay, makes the same choice in C).
- "copy": read into a scratch buffer shared by every connection, then write; the rest of a
  partial write is kept per direction. The loop is pump.copy (Cython, or its Python twin
  with GLASSWING_PUMP=python: the relay a plain asyncio program would write). The reference
  the splice path is measured against, and the one that can read sockets whose bytes a BPF
  sk_msg program put in the psock queue (splice reads only the TCP receive queue).
Idle connections hold no pipe and no buffer in either mover.
"""
import os

from dataplane.relay import pump as _pump
from dataplane.relay.pipes import POOL

SRC_EOF, DST_BLOCKED, SRC_DRAINED = _pump.SRC_EOF, _pump.DST_BLOCKED, _pump.SRC_DRAINED
MODES = ("auto", "splice", "copy")


class SpliceMover:
    __slots__ = ("pipe", "pending", "pool")

    def __init__(self, initial: bytes = b"", pool=None):
        self.pool = pool or POOL
        self.pipe = None
        self.pending = 0
        if initial:  # bytes read ahead of the relay (after a preamble) go first
            self.pipe = self.pool.get()
            view = memoryview(initial)
            while view:  # at most one preamble read (a few KiB): far below a pipe's size
                n = os.write(self.pipe[1], view)
                self.pending += n
                view = view[n:]

    def step(self, src_fd: int, dst_fd: int, budget: int):
        if self.pipe is None:
            self.pipe = self.pool.get()
        try:
            moved, self.pending, status = _pump.pump(src_fd, dst_fd, self.pipe[0], self.pipe[1],
                                                     self.pending, budget)
        except OSError:
            # The pipe may hold bytes `pending` does not count (read from src before dst
            # failed): it must never reach another connection.
            self.pool.put(self.pipe, empty=False)
            self.pipe, self.pending = None, 0
            raise
        if self.pending == 0:
            self.release()
        return moved, status

    def release(self) -> None:
        if self.pipe is not None and self.pending == 0:
            self.pool.put(self.pipe)
            self.pipe = None

    def discard(self) -> None:
        if self.pipe is not None:
            self.pool.put(self.pipe, empty=self.pending == 0)
            self.pipe = None
            self.pending = 0


class CopyMover:
    __slots__ = ("rest",)

    def __init__(self, initial: bytes = b""):
        self.rest = bytes(initial)  # read from src, not yet written to dst

    @property
    def pending(self) -> int:
        return len(self.rest)

    def step(self, src_fd: int, dst_fd: int, budget: int):
        moved, self.rest, status = _pump.copy(src_fd, dst_fd, self.rest, budget)
        return moved, status

    def release(self) -> None:
        pass

    def discard(self) -> None:
        self.rest = b""


class AutoMover:
    """Copy while a direction carries small messages, splice once it carries bulk.

    Measured in one run (`glasswing bench --quick`, docs/bench/quick.json): the Cython copy
    loop is ahead of splice on small messages (round trip p50 42.5 against 44.9 us on one node,
    HTTP keep-alive 53.7k against 47.0k requests/s) and splice is ahead on bulk (9.9 against
    9.2 Gbit/s across nodes) and on round-trip p99. A direction starts with copy and moves to
    splice for good the first time one readiness moves BULK bytes or more with nothing left
    over (so no byte is in flight in the copy mover when it changes)."""
    __slots__ = ("inner", "pool")
    BULK = 64 * 1024

    def __init__(self, initial: bytes = b"", pool=None):
        self.inner = CopyMover(initial)
        self.pool = pool

    @property
    def pending(self) -> int:
        return self.inner.pending

    @property
    def spliced(self) -> bool:
        return type(self.inner) is SpliceMover

    def step(self, src_fd: int, dst_fd: int, budget: int):
        moved, status = self.inner.step(src_fd, dst_fd, budget)
        if moved >= self.BULK and type(self.inner) is CopyMover and not self.inner.rest:
            self.inner = SpliceMover(pool=self.pool)
        return moved, status

    def release(self) -> None:
        self.inner.release()

    def discard(self) -> None:
        self.inner.discard()


def make(mode: str, initial: bytes = b"", pool=None):
    """The mover for a relay in this mode (see the module doc); pool: where splice pipes
    come from (default POOL, the event loop's; another thread needs its own)."""
    if mode == "auto":
        return AutoMover(initial, pool)
    if mode == "splice":
        return SpliceMover(initial, pool)
    if mode == "copy":
        return CopyMover(initial)
    raise ValueError(f"relay mode must be one of {', '.join(MODES)}, not {mode!r}")
