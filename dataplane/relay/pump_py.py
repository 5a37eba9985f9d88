"""Splice byte pump, pure-Python twin of the Cython module dataplane.relay._pump_c (ext/pump.pyx).

One direction of a TCP connection: src fd -> pipe -> dst fd with splice(2), so the bytes never
enter userspace. The pipe holds what was read from src but not yet written to dst; the caller
keeps that count (`pending`) and passes back what the previous call returned.

pump(src_fd, dst_fd, pipe_r, pipe_w, pending, budget) -> (moved, pending, status)

- All four fds must be non-blocking (sockets O_NONBLOCK, pipe from make_pipe()).
- moved: bytes written to dst in this call. pending: bytes left in the pipe afterwards.
- The call first flushes the pipe into dst, then repeatedly splices src -> pipe (at most CHUNK
  bytes at a time) and flushes again. src is only read into an empty pipe, so EAGAIN from src
  always means "no data", never "pipe full".
- budget bounds the bytes read from src in one call, so one busy connection cannot starve the
  event loop. Exact bound: moved + pending_out - pending_in <= budget, hence
  moved <= pending_in + budget. budget=0 only flushes the pipe.
- status is one of (never a combination of):
    SRC_DRAINED  src returned EAGAIN, pipe empty: wait for src readable.
    DST_BLOCKED  dst returned EAGAIN with pending > 0: wait for dst writable and stop polling
                 src (the pipe is the only buffer; not reading src gives TCP back-pressure).
    SRC_EOF      src returned 0 (peer shut down its write side). Always with pending == 0,
                 since src is only read into an empty pipe: the caller can shutdown(SHUT_WR)
                 dst right away. While dst is blocked src is not read, so the EOF is seen by a
                 later call, after the flush. EOF is sticky: calling again reports it again.
    0            budget spent, pipe flushed, src maybe still readable: keep src registered
                 (asyncio's add_reader is level-triggered, so the pump runs again on the next
                 loop iteration, after the other ready callbacks). Also the result of budget=0.
- Errors other than EAGAIN (ECONNRESET, EPIPE, ...) raise OSError with that errno (the usual
  subclass, e.g. ConnectionResetError, BrokenPipeError); the pipe content is then undefined
  and the connection should be torn down. EPIPE on dst also raises SIGPIPE, which Python
  ignores by default. A zero return from pipe -> dst (pipe empty: wrong `pending`) raises
  OSError(EIO).
"""

import errno
import os

SRC_EOF = 1
DST_BLOCKED = 2
SRC_DRAINED = 4
CHUNK = 256 * 1024

# Never SPLICE_F_MORE: it makes TCP hold a small segment back waiting for more (measured at
# ~400 ms for small request/response messages). Within one splice the kernel already sets
# MSG_MORE between pipe buffers, so large transfers do not need it.
_FLAGS = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE


def pump(src_fd: int, dst_fd: int, pipe_r: int, pipe_w: int, pending: int,
         budget: int) -> tuple[int, int, int]:
    """Move bytes src_fd -> pipe -> dst_fd; return (moved, pending, status). See module doc."""
    if pending < 0 or budget < 0:
        raise ValueError("pending and budget must be >= 0")
    moved = 0
    taken = 0  # bytes read from src in this call, never above budget
    while True:
        while pending > 0:  # EINTR is retried by os.splice itself (PEP 475)
            try:
                n = os.splice(pipe_r, dst_fd, pending, flags=_FLAGS)
            except BlockingIOError:
                return moved, pending, DST_BLOCKED
            if n == 0:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            pending -= n
            moved += n
        if taken >= budget:
            return moved, 0, 0
        try:
            n = os.splice(src_fd, pipe_w, min(CHUNK, budget - taken), flags=_FLAGS)
        except BlockingIOError:
            return moved, 0, SRC_DRAINED
        if n == 0:
            return moved, 0, SRC_EOF
        taken += n
        pending += n


COPY_CHUNK = 256 * 1024
_scratch = bytearray(COPY_CHUNK)  # one buffer for every call: callers hold the GIL


def copy(src_fd: int, dst_fd: int, rest: bytes, budget: int) -> tuple[int, bytes, int]:
    """Move bytes src_fd -> dst_fd through userspace: recv into a scratch buffer, send.

    The recv/send twin of pump(): the same statuses and budget, for sockets a splice cannot
    read (a socket whose bytes arrive in a BPF psock queue) and as the plain reference.
    rest: bytes read earlier and not yet written (b"" if none); returned anew, since a partial
    send leaves the remainder with the caller (the scratch buffer is shared). SRC_EOF and
    SRC_DRAINED always come with rest == b"", DST_BLOCKED with rest != b"".
    """
    if budget < 0:
        raise ValueError("budget must be >= 0")
    moved = taken = 0
    view = memoryview(_scratch)
    while True:
        if rest:
            try:
                n = os.write(dst_fd, rest)
            except BlockingIOError:
                return moved, rest, DST_BLOCKED
            moved += n
            rest = rest[n:]
            if rest:
                return moved, rest, DST_BLOCKED
        if taken >= budget:
            return moved, b"", 0
        try:
            n = os.readv(src_fd, [view[:min(COPY_CHUNK, budget - taken)]])
        except BlockingIOError:
            return moved, b"", SRC_DRAINED
        if n == 0:
            return moved, b"", SRC_EOF
        taken += n
        try:
            w = os.write(dst_fd, view[:n])
        except BlockingIOError:
            w = 0
        moved += w
        if w < n:
            return moved, bytes(view[w:n]), DST_BLOCKED
