# cython: language_level=3
"""The relay engine (ext/relay/engine.c) for Python: a thread with its own epoll that moves
the bytes of every connection handed to it, without the GIL. Built as dataplane.relay._engine_c.

Twin of dataplane/relay/engine_py.py (same class, methods and semantics; that module's docstring
is the reference).
"""
import os

from libc.errno cimport errno
from libc.stdint cimport uint32_t, uint64_t, int64_t

cdef extern from "relay/engine.h" nogil:
    cdef struct gw_engine:
        pass
    cdef struct gw_ended:
        uint32_t id
        int error
        uint64_t bytes[2]
    enum:
        GW_MODE_AUTO
        GW_MODE_SPLICE
        GW_MODE_COPY
        GW_MODE_KERNEL
    gw_engine *gw_engine_new(uint32_t max_conns)
    void gw_engine_stop(gw_engine *e)
    void gw_engine_free(gw_engine *e)
    int gw_engine_done_fd(const gw_engine *e)
    int gw_engine_kernel(gw_engine *e, int socks_fd, int state_fd, int ring_fd, size_t ring_bytes)
    int64_t gw_engine_add(gw_engine *e, int a, int b, const char *to_b, size_t to_b_len,
                          const char *to_a, size_t to_a_len, int mode)
    int gw_engine_end(gw_engine *e, uint32_t id, int reset)
    int gw_engine_bytes(gw_engine *e, uint32_t id, uint64_t out[2])
    size_t gw_engine_done(gw_engine *e, gw_ended *out, size_t n)
    uint32_t gw_engine_open(const gw_engine *e)
    uint32_t gw_engine_in_kernel(const gw_engine *e)

MODES = {"auto": GW_MODE_AUTO, "splice": GW_MODE_SPLICE, "copy": GW_MODE_COPY,
         "kernel": GW_MODE_KERNEL}


cdef class Engine:
    cdef gw_engine *e
    cdef int stopped

    def __cinit__(self, uint32_t max_conns=1 << 20):
        self.e = gw_engine_new(max_conns)
        if self.e == NULL:
            raise OSError(errno, "relay engine: " + os.strerror(errno))

    def __dealloc__(self):
        if self.e != NULL:
            with nogil:
                gw_engine_free(self.e)
            self.e = NULL

    cdef gw_engine *_live(self) except NULL:
        if self.e == NULL:
            raise ValueError("relay engine is closed")
        return self.e

    def fileno(self) -> int:
        """An fd readable when ended connections wait in done()."""
        return gw_engine_done_fd(self._live())

    def kernel(self, int socks_fd, int state_fd, int ring_fd, size_t ring_bytes) -> bool:
        """Enable mode "kernel" with the kernel relay's maps (bpf/kernel_relay.c; the engine
        keeps duplicates of the fds). True: this twin carries bytes in the kernel."""
        if gw_engine_kernel(self._live(), socks_fd, state_fd, ring_fd, ring_bytes) < 0:
            raise OSError(errno, "relay engine: " + os.strerror(errno))
        return True

    def in_kernel(self) -> int:
        """Open connections whose bytes the kernel carries (mode kernel)."""
        return gw_engine_in_kernel(self._live())

    def add(self, int a, int b, bytes to_b=b"", bytes to_a=b"", str mode="auto") -> int:
        """Hand over two non-blocking sockets (their fds are the engine's from here on, even
        when this raises); returns the connection's id."""
        cdef gw_engine *e
        cdef int m
        try:
            e = self._live()
            m = MODES[mode]
        except BaseException:
            os.close(a)
            os.close(b)
            raise
        cdef const char *pb = to_b
        cdef const char *pa = to_a
        cdef size_t lb = len(to_b), la = len(to_a)
        cdef int64_t cid
        with nogil:
            cid = gw_engine_add(e, a, b, pb, lb, pa, la, m)
        if cid < 0:
            raise OSError(errno, "relay engine: " + os.strerror(errno))
        return cid

    def abort(self, uint32_t cid) -> bool:
        """Reset both sides of an open connection (it then ends with ECONNABORTED); False
        when it is not open."""
        return self._end(cid, 1)

    def close_conn(self, uint32_t cid) -> bool:
        """Close both sides of an open connection cleanly (it then ends with 0); False when
        it is not open."""
        return self._end(cid, 0)

    cdef bint _end(self, uint32_t cid, int reset) except -1:
        cdef gw_engine *e = self._live()
        cdef int rc
        with nogil:
            rc = gw_engine_end(e, cid, reset)
        return rc == 0

    def bytes(self, uint32_t cid):
        """(a -> b, b -> a) moved so far, or None when the connection is not open."""
        cdef uint64_t out[2]
        cdef gw_engine *e = self._live()
        cdef int rc
        with nogil:
            rc = gw_engine_bytes(e, cid, out)
        return (out[0], out[1]) if rc == 0 else None

    def done(self) -> list:
        """Ended connections as (id, errno or 0, bytes a -> b, bytes b -> a)."""
        cdef gw_ended buf[256]
        cdef gw_engine *e = self._live()
        cdef size_t n, i
        out = []
        while True:
            with nogil:
                n = gw_engine_done(e, buf, 256)
            for i in range(n):
                out.append((buf[i].id, buf[i].error, buf[i].bytes[0], buf[i].bytes[1]))
            if n < 256:
                return out

    def __len__(self):
        return gw_engine_open(self._live())

    def stop(self) -> None:
        """Stop the thread and reset every open connection (collect them with done())."""
        cdef gw_engine *e = self._live()
        with nogil:
            gw_engine_stop(e)

    def close(self) -> None:
        if self.e != NULL:
            with nogil:
                gw_engine_free(self.e)
            self.e = NULL
