/* The splice byte loop, one direction of a TCP connection: src -> pipe -> dst with splice(2),
 * so the bytes never enter userspace. One loop for both of its users: the event loop's pump
 * (ext/pump.pyx through ext/pump.pxd, dataplane.relay._pump_c.pump) and the relay engine's thread
 * (ext/relay/engine.c). The semantics are documented in dataplane/relay/pump_py.py (the Python
 * twin of the pump). Needs no GIL and never blocks (all four fds non-blocking).
 */
#ifndef GW_SPLICE_LOOP_H
#define GW_SPLICE_LOOP_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  /* splice(2) */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/types.h>

enum {
    GW_SRC_EOF = 1,        /* src returned 0 (peer half-closed); only with *pending == 0 */
    GW_DST_BLOCKED = 2,    /* dst returned EAGAIN with bytes still in the pipe */
    GW_SRC_DRAINED = 4,    /* src returned EAGAIN; the pipe is empty */
    GW_CHUNK = 262144,     /* most bytes asked of src per splice(2) call (256 KiB) */
};

/* Never SPLICE_F_MORE: it makes TCP hold a small segment back waiting for more (measured at
 * ~400 ms for small request/response messages). Within one splice the kernel already sets
 * MSG_MORE between pipe buffers, so large transfers do not need it. */
#define GW_SPLICE_FLAGS (SPLICE_F_NONBLOCK | SPLICE_F_MOVE)

/* Moves bytes src -> pipe -> dst until EAGAIN, EOF or `budget` bytes read from src.
 * In/out: *pending (bytes in the pipe); adds the bytes written to dst to *moved.
 * Returns the status (0: budget spent, or one GW_* bit), or -1 with *err set to the errno of
 * the failed splice (EIO when the pipe was empty though *pending said otherwise). */
static inline int gw_splice_loop(int src, int dst, int pipe_r, int pipe_w, size_t *pending,
                                 size_t budget, size_t *moved, int *err)
{
    size_t taken = 0;  /* bytes read from src in this call, never above budget */
    for (;;) {
        /* Flush the pipe first: src is only read into an empty pipe, so EAGAIN from the
         * src -> pipe splice always means "src has nothing", never "pipe full". */
        while (*pending > 0) {
            ssize_t n = splice(pipe_r, NULL, dst, NULL, *pending, GW_SPLICE_FLAGS);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN)
                    return GW_DST_BLOCKED;
                *err = errno;
                return -1;
            }
            if (n == 0) {
                *err = EIO;
                return -1;
            }
            *pending -= (size_t)n;
            *moved += (size_t)n;
        }
        if (taken >= budget)  /* budget spent, src maybe still readable: no SRC_DRAINED */
            return 0;
        size_t want = budget - taken < GW_CHUNK ? budget - taken : GW_CHUNK;
        ssize_t n = splice(src, NULL, pipe_w, NULL, want, GW_SPLICE_FLAGS);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return GW_SRC_DRAINED;
            *err = errno;
            return -1;
        }
        if (n == 0)
            return GW_SRC_EOF;  /* the pipe is empty here: EOF always comes with pending 0 */
        taken += (size_t)n;
        *pending += (size_t)n;
    }
}

#endif
