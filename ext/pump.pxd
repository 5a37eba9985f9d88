# C-level interface of the splice byte pump: the status bits, splice(2), and the loop itself.
#
# ext/pump.pyx (built as dataplane._pump_c) cimports this file as `pump`. Because the module
# name differs from the file name, Cython does not pair the two automatically, and Cython 3
# has no forward declarations in a .pyx, so the loop is a `cdef inline` function here: it
# compiles into the extension, with no runtime import of a `pump` module.
# The semantics are documented in dataplane/pump_py.py (the pure-Python twin).

from libc.errno cimport errno, EAGAIN, EINTR, EIO

# splice(2) is a GNU extension: _GNU_SOURCE comes from pyconfig.h, which Python.h includes
# before anything else in the generated C file.
cdef extern from "fcntl.h" nogil:
    ctypedef long long loff_t
    ssize_t splice(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out,
                   size_t len, unsigned int flags)
    enum:
        SPLICE_F_MOVE
        SPLICE_F_NONBLOCK

cdef enum:
    PUMP_SRC_EOF = 1       # src returned 0 (peer half-closed); only reported with pending == 0
    PUMP_DST_BLOCKED = 2   # dst returned EAGAIN with bytes still in the pipe
    PUMP_SRC_DRAINED = 4   # src returned EAGAIN; the pipe is empty
    PUMP_CHUNK = 262144    # most bytes asked of src per splice(2) call (256 KiB)

# Never SPLICE_F_MORE: it makes TCP hold a small segment back waiting for more (measured at
# ~400 ms for small request/response messages). Within one splice the kernel already sets
# MSG_MORE between pipe buffers, so large transfers do not need it.
cdef enum:
    PUMP_SPLICE_FLAGS = SPLICE_F_NONBLOCK | SPLICE_F_MOVE


# Moves bytes src_fd -> pipe -> dst_fd until EAGAIN, EOF or `budget` bytes read from src.
# In/out: pending[0] (bytes in the pipe); adds the bytes written to dst to moved[0].
# Returns the status (0 or one PUMP_* bit), or -1 with err[0] set to the errno of the failed
# splice. Needs no GIL and never raises.
cdef inline int pump_loop(int src_fd, int dst_fd, int pipe_r, int pipe_w,
                          Py_ssize_t *pending, Py_ssize_t budget,
                          Py_ssize_t *moved, int *err) noexcept nogil:
    cdef ssize_t n
    cdef Py_ssize_t taken = 0      # bytes read from src in this call, never above budget
    cdef size_t want
    while True:
        # Flush the pipe first: src is only read into an empty pipe, so EAGAIN from the
        # src -> pipe splice always means "src has nothing", never "pipe full".
        while pending[0] > 0:
            n = splice(pipe_r, NULL, dst_fd, NULL, <size_t>pending[0], PUMP_SPLICE_FLAGS)
            if n < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    return PUMP_DST_BLOCKED
                err[0] = errno
                return -1
            if n == 0:              # pipe empty with no writer: `pending` was wrong
                err[0] = EIO
                return -1
            pending[0] -= n
            moved[0] += n
        if taken >= budget:         # budget spent, src maybe still readable: no SRC_DRAINED
            return 0
        want = <size_t>(budget - taken)
        if want > PUMP_CHUNK:
            want = PUMP_CHUNK
        n = splice(src_fd, NULL, pipe_w, NULL, want, PUMP_SPLICE_FLAGS)
        if n < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return PUMP_SRC_DRAINED
            err[0] = errno
            return -1
        if n == 0:
            return PUMP_SRC_EOF     # the pipe is empty here: EOF always comes with pending == 0
        taken += n
        pending[0] += n
