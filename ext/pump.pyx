# cython: language_level=3
"""Splice byte pump, one direction of a TCP connection: src fd -> pipe -> dst fd, zero copy.

Cython twin of dataplane/pump_py.py: same signature, constants and semantics (that module's
docstring is the reference). The loop is pump_loop from ext/pump.pxd, run without the GIL.
"""

import os

from pump cimport (pump_loop, PUMP_SRC_EOF, PUMP_DST_BLOCKED, PUMP_SRC_DRAINED,
                   PUMP_CHUNK)

SRC_EOF = PUMP_SRC_EOF
DST_BLOCKED = PUMP_DST_BLOCKED
SRC_DRAINED = PUMP_SRC_DRAINED
CHUNK = PUMP_CHUNK


def pump(int src_fd, int dst_fd, int pipe_r, int pipe_w, Py_ssize_t pending, Py_ssize_t budget):
    """Move bytes src_fd -> pipe -> dst_fd; return (moved, pending, status).

    Raises OSError (with the errno of the failed splice) on errors other than EAGAIN.
    """
    if pending < 0 or budget < 0:
        raise ValueError("pending and budget must be >= 0")
    cdef Py_ssize_t moved = 0
    cdef int err = 0
    cdef int status
    with nogil:
        status = pump_loop(src_fd, dst_fd, pipe_r, pipe_w, &pending, budget, &moved, &err)
    if status < 0:
        raise OSError(err, os.strerror(err))
    return moved, pending, status
