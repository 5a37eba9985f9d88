/* What the relay engine's two files share (engine.c: the engine; kernel_mode.c: its mode
 * "kernel", with bpf/kernel_relay.c): the engine's and a connection's state, and the calls
 * each makes into the other. Internal: the owner's interface is engine.h. Everything here
 * runs on the engine thread unless its comment says otherwise (engine.c's opening comment
 * has the threading model).
 */
#ifndef GW_ENGINE_INTERNAL_H
#define GW_ENGINE_INTERNAL_H

#include "engine.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define PIPES_KEPT 64
#define SLOTS_PER_CHUNK 1024u
#define RING UINT64_C(0xfffffffffffffffe)  /* epoll data of the kernel relay's event ring */
#define KR_HOLD (1 << 20)         /* SO_RCVLOWAT that holds verdicts off while a conn goes in */
#define DRAIN_POLL_NS 20000       /* how often a direction waiting for the kernel is checked */
#define KR_AFTER 16               /* mode kernel: turns of small messages before the kernel
                                     takes a connection (short ones never pay for it) */

enum { FREE, QUEUED, LIVE, ENDED };

struct dir {                  /* one direction: src = fd[i], dst = fd[1 - i] for dir[i] */
    int pipe_r, pipe_w;       /* -1 while no bytes are in flight through a pipe */
    size_t pending;           /* bytes in the pipe */
    char *rest;               /* read from src, not yet written (copy leftovers, read-ahead) */
    size_t rest_len, rest_off;
    uint64_t bytes;           /* written to dst; read by the owner without the lock */
    uint8_t done, reading, writing, spliced;
    /* kernel mode (bpf/kernel_relay.c) */
    uint8_t kern;             /* the kernel carries src -> dst */
    uint8_t drain;            /* handed back (bulk or EOF): waiting until dst has written
                                 every byte the kernel took, then read src in user space */
    uint8_t psock;            /* src is in the kernel relay's map: read it, never splice */
    uint64_t cookie;          /* src's socket cookie: its gw_kr_state key */
    uint64_t w0;              /* what dst had written when the kernel took over */
    uint64_t got;             /* read from src since then: against the verdict's `passed` */
    uint8_t fin;              /* src's FIN came (EPOLLRDHUP) */
};

struct drain_item {
    uint32_t id, gen;
    int side;
};

struct conn {
    int fd[2];
    uint32_t mask[2];         /* epoll events asked of fd[i]; 0: not in epoll */
    uint32_t gen;
    uint32_t next_free;
    uint8_t state, mode;
    uint8_t in_map;           /* both sockets are in the kernel relay's map */
    uint8_t turns;            /* mode kernel: small-message turns so far, up to KR_AFTER */
    struct dir dir[2];
};

struct queue {
    void *items;
    size_t len, cap, size;
};

struct gw_engine {
    pthread_t thread;
    int ep, wake_fd, done_fd;
    pthread_mutex_t mu;
    /* under mu */
    struct conn **chunks;
    uint32_t max_conns, next_unused, free_head, open;
    uint32_t in_kernel;       /* conns in the kernel relay's map: engine thread writes, owner reads */
    struct queue added, aborts, ended;   /* ids, ids, struct gw_ended */
    int stop;
    /* engine thread only */
    char *scratch;
    int pipes[PIPES_KEPT][2];
    int npipes;
    uint32_t *work;
    size_t work_cap;
    /* kernel relay: fds set once by gw_engine_kernel before any add, -1 without it */
    int kr_socks, kr_state, kr_ring;
    void *ring_cons, *ring_prod;
    size_t ring_bytes, ring_map_len;
    long page;
    struct drain_item *drains;  /* directions waiting for the kernel (engine thread) */
    size_t ndrains, drains_cap;
};

static inline struct conn *slot(struct gw_engine *e, uint32_t id)
{
    return &e->chunks[id / SLOTS_PER_CHUNK][id % SLOTS_PER_CHUNK];
}

/* The shared object exports only engine.h's gw_engine_* (and the module's init). */
#pragma GCC visibility push(hidden)

/* engine.c */
void conn_watch(struct gw_engine *e, struct conn *c, uint32_t id, int side);
void conn_end(struct gw_engine *e, struct conn *c, uint32_t id, int error);

/* kernel_mode.c */
void to_kernel(struct gw_engine *e, struct conn *c, uint32_t id);
int kernel_event(struct gw_engine *e, struct conn *c, uint32_t id, int side, uint32_t events);
int psock_eof(struct gw_engine *e, struct conn *c, int i, int recv_eof, int *err);
int push_drain(struct gw_engine *e, struct conn *c, uint32_t id, int side);
void poll_drains(struct gw_engine *e);
void read_ring(struct gw_engine *e);
void kernel_leave(struct gw_engine *e, struct conn *c, uint64_t bytes[2]);
void kernel_bytes(struct gw_engine *e, const uint64_t cookie[2], uint64_t out[2]);
void kernel_free(struct gw_engine *e);

#pragma GCC visibility pop

#endif
