# cython: language_level=3
"""Byte pumps, one direction of a TCP connection each: pump() splices src fd -> pipe -> dst
fd (zero copy), copy() reads into a scratch buffer and writes.

Cython twin of dataplane/relay/pump_py.py: same signatures, constants and semantics (that module's
docstrings are the reference). pump's loop is gw_splice_loop (ext/relay/splice_loop.h, shared with the
relay engine), run without the GIL.
"""

import os

from libc.errno cimport errno, EAGAIN, EINTR
from pump cimport gw_splice_loop, GW_SRC_EOF, GW_DST_BLOCKED, GW_SRC_DRAINED, GW_CHUNK

SRC_EOF = GW_SRC_EOF
DST_BLOCKED = GW_DST_BLOCKED
SRC_DRAINED = GW_SRC_DRAINED
CHUNK = GW_CHUNK


def pump(int src_fd, int dst_fd, int pipe_r, int pipe_w, Py_ssize_t pending, Py_ssize_t budget):
    """Move bytes src_fd -> pipe -> dst_fd; return (moved, pending, status).

    Raises OSError (with the errno of the failed splice) on errors other than EAGAIN.
    """
    if pending < 0 or budget < 0:
        raise ValueError("pending and budget must be >= 0")
    cdef size_t in_pipe = <size_t>pending, moved = 0
    cdef int err = 0
    cdef int status
    with nogil:
        status = gw_splice_loop(src_fd, dst_fd, pipe_r, pipe_w, &in_pipe, <size_t>budget, &moved, &err)
    if status < 0:
        raise OSError(err, os.strerror(err))
    return moved, in_pipe, status


cdef extern from "unistd.h" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)

COPY_CHUNK = 262144
cdef char _scratch[262144]  # one buffer for every call: the GIL is held throughout


def copy(int src_fd, int dst_fd, bytes rest, Py_ssize_t budget):
    """Move bytes src_fd -> dst_fd through a scratch buffer: read, write; return
    (moved, rest, status). Twin of dataplane.relay.pump_py.copy (its docstring is the reference).

    Keeps the GIL (the scratch buffer is shared): the sockets are non-blocking, so no call
    waits."""
    if budget < 0:
        raise ValueError("budget must be >= 0")
    cdef Py_ssize_t moved = 0, taken = 0, off = 0, left = len(rest)
    cdef ssize_t n, w
    cdef size_t want
    cdef const char *p = rest
    while left > 0:  # what an earlier call could not write goes first
        w = write(dst_fd, p + off, <size_t>left)
        if w < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return moved, rest[off:], GW_DST_BLOCKED
            raise OSError(errno, os.strerror(errno))
        moved += w
        off += w
        left -= w
    while True:
        if taken >= budget:
            return moved, b"", 0
        want = <size_t>(budget - taken)
        if want > sizeof(_scratch):
            want = sizeof(_scratch)
        n = read(src_fd, _scratch, want)
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return moved, b"", GW_SRC_DRAINED
            raise OSError(errno, os.strerror(errno))
        if n == 0:
            return moved, b"", GW_SRC_EOF
        taken += n
        off = 0
        while off < n:
            w = write(dst_fd, _scratch + off, <size_t>(n - off))
            if w < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    return moved, _scratch[off:n], GW_DST_BLOCKED
                raise OSError(errno, os.strerror(errno))
            moved += w
            off += w
