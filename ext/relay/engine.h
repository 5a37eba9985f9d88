/* The relay engine: one thread with its own epoll that carries the bytes of every opaque
 * connection handed to it, both ways, without Python and without the GIL.
 *
 * The forwarder's asyncio loop accepts, picks an endpoint, connects, and then hands the two
 * sockets to the engine (gw_engine_add). From then on the engine owns the fds: it moves
 * bytes (copy through a scratch buffer while a direction carries small messages, splice
 * through a pipe for good once one readiness moves GW_BULK bytes or more, the same choice
 * as dataplane/relay/movers.py AutoMover), forwards half-closes, and closes both sockets when
 * both directions are done, or resets both when either fails or the owner asks
 * (gw_engine_end). Each ended connection is queued for the owner, who collects it with
 * gw_engine_done() when the done fd (an eventfd) turns readable.
 *
 * In mode GW_MODE_KERNEL the kernel carries the bytes first (bpf/kernel_relay.c: both sockets
 * in a SOCKHASH, a stream verdict redirects each skb to the other socket) and the engine only
 * watches for FIN and errors; a direction the verdict turns over (bulk) or that got its FIN
 * comes back to the engine once the other socket has written all the kernel took.
 *
 * Semantics are those of dataplane/relay/relay.py (the reference, run in a thread by the Python
 * twin dataplane/relay/engine_py.py). Built into dataplane.relay._engine_c by ext/engine.pyx.
 */
#ifndef GW_ENGINE_H
#define GW_ENGINE_H

#include <stddef.h>
#include <stdint.h>

enum {
    GW_MODE_AUTO = 0,    /* copy, then splice for good once a direction carries bulk */
    GW_MODE_SPLICE = 1,
    GW_MODE_COPY = 2,
    GW_MODE_KERNEL = 3,  /* bytes in the kernel (bpf/kernel_relay.c) until a direction carries
                            bulk, then that direction as auto without splice; as auto when
                            gw_engine_kernel was not called or the sockets cannot join */
};

struct gw_engine;

struct gw_ended {
    uint32_t id;
    int error;           /* 0: both sides ended cleanly; else the errno, or ECONNABORTED
                            when the owner asked for the reset */
    uint64_t bytes[2];   /* a -> b, b -> a */
};

/* NULL with errno set on failure. The thread runs from here until gw_engine_free(). */
struct gw_engine *gw_engine_new(uint32_t max_conns);
/* Stops the thread and resets every connection still open (their ends are then collected
 * with gw_engine_done as usual); adds are refused from here on. Idempotent. */
void gw_engine_stop(struct gw_engine *e);
/* Stops (if not yet) and frees everything. */
void gw_engine_free(struct gw_engine *e);
int gw_engine_done_fd(const struct gw_engine *e);
/* Enable GW_MODE_KERNEL with the kernel relay's SOCKHASH, state map and event ring (of
 * ring_bytes data bytes), loaded and attached by the owner; the engine keeps duplicates of
 * the fds. Call before the first add. 0, or -1 with errno set. */
int gw_engine_kernel(struct gw_engine *e, int socks_fd, int state_fd, int ring_fd,
                     size_t ring_bytes);
/* Takes ownership of fds a and b (non-blocking sockets) at once, even on failure (then both
 * are closed). to_b/to_a: bytes read ahead that go out first. Returns the connection id,
 * or -1 with errno set (ENOMEM, EMFILE past max_conns, ESHUTDOWN once stopped). */
int64_t gw_engine_add(struct gw_engine *e, int a, int b, const char *to_b, size_t to_b_len,
                      const char *to_a, size_t to_a_len, int mode);
/* Ask for the end of an open connection: reset both sides (it then ends with
 * ECONNABORTED), or with reset 0 close both cleanly (it ends with 0). 0, or -1 (ESRCH)
 * when id is not open. */
int gw_engine_end(struct gw_engine *e, uint32_t id, int reset);
/* Bytes moved so far, a -> b and b -> a. -1 (ESRCH) when id is not open. */
int gw_engine_bytes(struct gw_engine *e, uint32_t id, uint64_t out[2]);
/* Up to n ended connections into out; their ids are free for reuse afterwards. */
size_t gw_engine_done(struct gw_engine *e, struct gw_ended *out, size_t n);
/* Connections open (added and not yet collected). */
uint32_t gw_engine_open(const struct gw_engine *e);
/* Open connections whose sockets are in the kernel relay's map (mode kernel). */
uint32_t gw_engine_in_kernel(const struct gw_engine *e);

#endif
