# C-level interface of the splice byte pump: its status bits and its loop.
#
# ext/pump.pyx (built as dataplane.relay._pump_c) cimports this file as `pump`. The loop itself is
# C, in ext/relay/splice_loop.h, shared with the relay engine (ext/relay/engine.c), so both
# move spliced bytes the same way. The semantics are documented in dataplane/relay/pump_py.py (the
# pure-Python twin).

cdef extern from "relay/splice_loop.h" nogil:
    enum:
        GW_SRC_EOF
        GW_DST_BLOCKED
        GW_SRC_DRAINED
        GW_CHUNK
    int gw_splice_loop(int src, int dst, int pipe_r, int pipe_w, size_t *pending,
                       size_t budget, size_t *moved, int *err)
