/* The relay engine (see engine.h): one thread, one epoll, every opaque connection.
 *
 * Threads: the engine thread is the only one that touches a live connection's sockets,
 * pipes and buffers. The owner's thread (the forwarder's asyncio loop) adds connections,
 * asks for resets, reads byte counters and collects ended connections. What they share is
 * behind one mutex (slot allocation and three queues), taken by the engine thread only to
 * swap queues, never around a syscall on a connection. Byte counters are read without the
 * lock (relaxed atomics). Slots live in fixed chunks that never move, so a pointer to a
 * connection stays valid; a slot is reused only after the owner has collected its end,
 * and epoll events carry the slot's generation so a stale event never reaches a new one.
 */
#define _GNU_SOURCE
#include "engine.h"
#include "kernel_relay.h"  /* bpf/: struct gw_kr_state, gw_kr_event */
#include "splice_loop.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SRC_EOF GW_SRC_EOF          /* the status bits of dataplane/relay/pump_py.py */
#define DST_BLOCKED GW_DST_BLOCKED
#define SRC_DRAINED GW_SRC_DRAINED

#define BUDGET (4u << 20)         /* bytes read per direction per readiness: fairness */
#define CHUNK GW_CHUNK            /* most bytes asked per read */
#define BULK (64u * 1024)         /* auto: one readiness moving this much switches to splice */
#define SMALL (16u * 1024)        /* a short read below this ends a copy turn (see copy_loop) */
#define PIPE_SIZE (1 << 20)
#define PIPES_KEPT 64
#define SLOTS_PER_CHUNK 1024u
#define BATCH 256
#define WAKE UINT64_MAX
#define NONE UINT32_MAX
#define GRACEFUL (1u << 31)       /* in the aborts queue: close instead of reset */
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

static int bpf_map(int cmd, int fd, const void *key, void *value, uint64_t flags);

static struct conn *slot(struct gw_engine *e, uint32_t id)
{
    return &e->chunks[id / SLOTS_PER_CHUNK][id % SLOTS_PER_CHUNK];
}

static int push(struct queue *q, const void *item)
{
    if (q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        void *p = realloc(q->items, cap * q->size);
        if (!p)
            return -1;
        q->items = p;
        q->cap = cap;
    }
    memcpy((char *)q->items + q->len * q->size, item, q->size);
    q->len++;
    return 0;
}

static void signal_fd(int fd)
{
    uint64_t one = 1;
    while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void drain_fd(int fd)
{
    uint64_t n;
    while (read(fd, &n, sizeof n) < 0 && errno == EINTR)
        ;
}

/* ---- pipes (engine thread) ---- */

static int pipe_get(struct gw_engine *e, struct dir *d)
{
    int p[2];
    if (e->npipes) {
        e->npipes--;
        p[0] = e->pipes[e->npipes][0];
        p[1] = e->pipes[e->npipes][1];
    } else {
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
            return -1;
        fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE);  /* EPERM past pipe-max-size: keep the default */
    }
    d->pipe_r = p[0];
    d->pipe_w = p[1];
    return 0;
}

/* A pipe that may still hold bytes is closed, never lent to another connection. */
static void pipe_put(struct gw_engine *e, struct dir *d)
{
    if (d->pipe_r < 0)
        return;
    if (d->pending == 0 && e->npipes < PIPES_KEPT) {
        e->pipes[e->npipes][0] = d->pipe_r;
        e->pipes[e->npipes][1] = d->pipe_w;
        e->npipes++;
    } else {
        close(d->pipe_r);
        close(d->pipe_w);
    }
    d->pipe_r = d->pipe_w = -1;
    d->pending = 0;
}

/* ---- moving bytes (engine thread) ---- */

/* Send buf[*off..len) to dst. 0 when it is all out, DST_BLOCKED, or -1 with *err. */
static int send_all(int dst, const char *buf, size_t len, size_t *off, size_t *moved, int *err)
{
    while (*off < len) {
        ssize_t w = send(dst, buf + *off, len - *off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return DST_BLOCKED;
            *err = errno;
            return -1;
        }
        *off += (size_t)w;
        *moved += (size_t)w;
    }
    return 0;
}

/* Write what is left in d->rest. 0 when it is all out, DST_BLOCKED, or -1 with *err. */
static int flush_rest(struct dir *d, int dst, size_t *moved, int *err)
{
    int status = send_all(dst, d->rest, d->rest_len, &d->rest_off, moved, err);
    if (status != 0)
        return status;
    free(d->rest);
    d->rest = NULL;
    d->rest_len = d->rest_off = 0;
    return 0;
}

/* src -> scratch -> dst until EAGAIN, EOF or budget; a partial write keeps the rest.
 * A short read of a small message means the receive queue was empty at that moment: the
 * loop stops there instead of asking again for an EAGAIN (one syscall less per message of
 * request/response traffic; epoll is level-triggered, so bytes or a FIN that came meanwhile
 * are reported). Bulk keeps reading until EAGAIN, so auto sees how much one readiness moves. */
static int copy_loop(struct gw_engine *e, struct dir *d, int src, int dst, size_t *moved,
                     int *err)
{
    size_t taken = 0;
    for (;;) {
        if (taken >= BUDGET)
            return 0;
        size_t want = BUDGET - taken < CHUNK ? BUDGET - taken : CHUNK;
        ssize_t n = recv(src, e->scratch, want, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return SRC_DRAINED;
            *err = errno;
            return -1;
        }
        if (n == 0)
            return SRC_EOF;
        taken += (size_t)n;
        d->got += (uint64_t)n;
        size_t off = 0;
        int status = send_all(dst, e->scratch, (size_t)n, &off, moved, err);
        if (status == DST_BLOCKED) {  /* keep what dst did not take, for flush_rest */
            d->rest_len = (size_t)n - off;
            d->rest_off = 0;
            d->rest = malloc(d->rest_len);
            if (!d->rest) {
                *err = ENOMEM;
                return -1;
            }
            memcpy(d->rest, e->scratch + off, d->rest_len);
        }
        if (status != 0)
            return status;
        if ((size_t)n < want && (size_t)n < SMALL)
            return SRC_DRAINED;
    }
}

/* src -> pipe -> dst with the loop the event loop's pump uses (splice_loop.h). */
static int splice_loop(struct gw_engine *e, struct dir *d, int src, int dst, size_t *moved,
                       int *err)
{
    if (d->pipe_r < 0 && pipe_get(e, d) < 0) {
        *err = errno;
        return -1;
    }
    return gw_splice_loop(src, dst, d->pipe_r, d->pipe_w, &d->pending, BUDGET, moved, err);
}

static int move(struct gw_engine *e, struct conn *c, int i, size_t *moved, int *err)
{
    struct dir *d = &c->dir[i];
    int src = c->fd[i], dst = c->fd[1 - i];
    int status = flush_rest(d, dst, moved, err);
    if (status != 0)
        return status;
    if (d->spliced) {
        status = splice_loop(e, d, src, dst, moved, err);
        if (status >= 0 && d->pending == 0)
            pipe_put(e, d);  /* idle directions hold no pipe */
        return status;
    }
    status = copy_loop(e, d, src, dst, moved, err);
    if (status >= 0 && (c->mode == GW_MODE_AUTO || c->mode == GW_MODE_KERNEL) && *moved >= BULK &&
        !d->rest && !d->psock)
        d->spliced = 1;
    return status;
}

/* ---- connection state (engine thread) ---- */

#define IN_EPOLL (1u << 31)       /* in mask: registered (kernel mode keeps sockets in epoll) */

static void watch(struct gw_engine *e, struct conn *c, uint32_t id, int side)
{
    struct dir *d = &c->dir[side];
    uint32_t want = (d->reading ? EPOLLIN : 0) | (c->dir[1 - side].writing ? EPOLLOUT : 0) |
                    ((d->kern && !d->drain) || (d->psock && d->reading) ? EPOLLRDHUP : 0);
    if (want == 0 && c->in_map)
        want = IN_EPOLL;  /* asked for nothing, but ERR must still end a kernel-mode conn */
    if (want == c->mask[side])
        return;
    /* A socket asked for nothing leaves epoll: HUP and ERR are reported whatever the mask. */
    int op = c->mask[side] == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    struct epoll_event ev = {.events = want & ~IN_EPOLL,
                             .data.u64 = ((uint64_t)c->gen << 33) | ((uint64_t)id << 1) | side};
    epoll_ctl(e->ep, op, c->fd[side], &ev);
    c->mask[side] = want;
}

static void set_reading(struct gw_engine *e, struct conn *c, uint32_t id, int i, int on)
{
    if (c->dir[i].reading != on) {
        c->dir[i].reading = on;
        watch(e, c, id, i);
    }
}

static void set_writing(struct gw_engine *e, struct conn *c, uint32_t id, int i, int on)
{
    if (c->dir[i].writing != on) {
        c->dir[i].writing = on;
        watch(e, c, id, 1 - i);
    }
}

static void reset_fd(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

/* Close (error 0) or reset both sides, give buffers back and queue the end for the owner. */
static void end(struct gw_engine *e, struct conn *c, uint32_t id, int error)
{
    struct gw_ended out = {.id = id, .error = error};
    for (int i = 0; i < 2; i++) {
        if (c->mask[i])
            epoll_ctl(e->ep, EPOLL_CTL_DEL, c->fd[i], NULL);
        c->mask[i] = 0;
        if (error)
            reset_fd(c->fd[i]);
        close(c->fd[i]);
        c->fd[i] = -1;
        struct dir *d = &c->dir[i];
        if (error)
            d->pending = 1;  /* bytes may be in the pipe: close it */
        pipe_put(e, d);
        free(d->rest);
        d->rest = NULL;
        d->rest_len = d->rest_off = 0;
        d->reading = d->writing = 0;
        out.bytes[i] = __atomic_load_n(&d->bytes, __ATOMIC_RELAXED);
    }
    if (c->in_map) {  /* the sockets left the SOCKHASH when closed: no verdict runs now */
        for (int i = 0; i < 2; i++) {
            struct gw_kr_state st;
            if (bpf_map(BPF_MAP_LOOKUP_ELEM, e->kr_state, &c->dir[i].cookie, &st, 0) == 0)
                out.bytes[i] += st.redirected;
            bpf_map(BPF_MAP_DELETE_ELEM, e->kr_state, &c->dir[i].cookie, NULL, 0);
        }
        c->in_map = 0;
        __atomic_store_n(&e->in_kernel, e->in_kernel - 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_lock(&e->mu);
    c->state = ENDED;
    int first = e->ended.len == 0;  /* later ones ride on the same wake-up of the owner */
    int failed = push(&e->ended, &out);
    pthread_mutex_unlock(&e->mu);
    if (failed)
        abort();  /* the owner would wait forever for this end: fail loudly */
    if (first)
        signal_fd(e->done_fd);
}

/* ---- kernel mode (engine thread; bpf/kernel_relay.c has the other half) ---- */

static int bpf_map(int cmd, int fd, const void *key, void *value, uint64_t flags)
{
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_fd = (uint32_t)fd;
    a.key = (uint64_t)(uintptr_t)key;
    a.value = (uint64_t)(uintptr_t)value;
    a.flags = flags;
    return (int)syscall(__NR_bpf, cmd, &a, sizeof a);
}

/* Bytes ever written to fd: acked plus still queued. Queued is read first, so a sum taken
 * while writes go on is at most what was written by the second read: "reached" is sure. */
static int written(int fd, uint64_t *out)
{
    int queued = 0;
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (ioctl(fd, SIOCOUTQ, &queued) < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return -1;
    *out = ti.tcpi_bytes_acked + (uint64_t)queued;
    return 0;
}

static void set_lowat(int fd, int v)
{
    setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v);
}

/* Put a connection's sockets in the kernel relay; the engine holds nothing for it (see
 * to_kernel). 0: the kernel carries both directions (or a direction the verdict already
 * turned over); -1: not possible, go on as auto (nothing of the kernel relay is left on the
 * sockets). */
static int kernel_start(struct gw_engine *e, struct conn *c, uint32_t id)
{
    if (e->kr_socks < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        socklen_t len = sizeof c->dir[i].cookie;
        if (getsockopt(c->fd[i], SOL_SOCKET, SO_COOKIE, &c->dir[i].cookie, &len) < 0 ||
            written(c->fd[1 - i], &c->dir[i].w0) < 0)
            return -1;
    }
    /* Verdicts held off (see kernel_relay.c) while the sockets go in, then the entries:
     * a socket's entry exists only once both sockets are in, so a redirect finds its peer. */
    set_lowat(c->fd[0], KR_HOLD);
    set_lowat(c->fd[1], KR_HOLD);
    int in = 0;
    for (; in < 2; in++) {
        uint32_t fd = (uint32_t)c->fd[in];
        if (bpf_map(BPF_MAP_UPDATE_ELEM, e->kr_socks, &c->dir[in].cookie, &fd, BPF_NOEXIST) < 0)
            break;
    }
    if (in == 0) {
        set_lowat(c->fd[0], 1);
        set_lowat(c->fd[1], 1);
        return -1;
    }
    /* A socket in the map stays there (taking it out would drop what its psock holds): a
     * socket whose peer could not join is read as a psock, with no entry (the verdict passes
     * everything), and the rest goes on as auto. */
    __atomic_store_n(&c->in_map, 1, __ATOMIC_RELEASE);  /* after the cookies: gw_engine_bytes */
    __atomic_store_n(&e->in_kernel, e->in_kernel + 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 2; i++) {
        struct dir *d = &c->dir[i];
        d->psock = 1;
        d->got = 0;  /* the verdict counts from here */
        if (in < 2)
            continue;
        struct gw_kr_state st = {.peer = c->dir[1 - i].cookie, .slot = id, .gen = c->gen,
                              .side = (uint32_t)i};
        /* EEXIST: a verdict ran first (a FIN came while held) and kept this direction in
         * user space from its first byte */
        if (bpf_map(BPF_MAP_UPDATE_ELEM, e->kr_state, &d->cookie, &st, BPF_NOEXIST) == 0)
            d->kern = 1;
    }
    if (in < 2)
        c->mode = GW_MODE_AUTO;
    set_lowat(c->fd[0], 1);  /* runs the verdict over what queued meanwhile, in order */
    set_lowat(c->fd[1], 1);
    return 0;
}

static int push_drain(struct gw_engine *e, struct conn *c, uint32_t id, int side)
{
    if (e->ndrains == e->drains_cap) {
        size_t cap = e->drains_cap ? e->drains_cap * 2 : 64;
        struct drain_item *p = realloc(e->drains, cap * sizeof *p);
        if (!p)
            return -1;
        e->drains = p;
        e->drains_cap = cap;
    }
    e->drains[e->ndrains++] = (struct drain_item){id, c->gen, side};
    return 0;
}

/* The kernel hands direction `side` back: its verdict turned it over (bulk), or src got its
 * FIN. No byte goes to dst from user space before dst has written all the kernel took. */
static void hand_back(struct gw_engine *e, struct conn *c, uint32_t id, int side)
{
    struct dir *d = &c->dir[side];
    if (!d->kern || d->drain)
        return;
    d->drain = 1;
    watch(e, c, id, side);
    if (push_drain(e, c, id, side) < 0)
        end(e, c, id, ENOMEM);
}

/* Where the kernel stands on direction `side`: src's TCP_INFO and its gw_kr_state entry (all
 * zero when absent and !need_entry). Taking TCP_INFO takes src's socket lock, so a verdict
 * running in softirq over bytes before a FIN has finished when this returns: with the FIN
 * in, the entry's counters are final. 0, or -1 with *err. */
static int settled(struct gw_engine *e, struct conn *c, int side, int need_entry,
                   struct tcp_info *ti, struct gw_kr_state *st, int *err)
{
    socklen_t len = sizeof *ti;
    memset(st, 0, sizeof *st);
    if (getsockopt(c->fd[side], IPPROTO_TCP, TCP_INFO, ti, &len) < 0 ||
        (bpf_map(BPF_MAP_LOOKUP_ELEM, e->kr_state, &c->dir[side].cookie, st, 0) < 0 &&
         (need_entry || errno != ENOENT))) {
        *err = errno;
        return -1;
    }
    return 0;
}

/* 1 when every byte the kernel took from src is in dst, -1 on error with *err. */
static int drained(struct gw_engine *e, struct conn *c, int side, int *err)
{
    struct tcp_info ti;
    struct gw_kr_state st;
    uint64_t w;
    if (settled(e, c, side, 1, &ti, &st, err) < 0)
        return -1;
    if (written(c->fd[1 - side], &w) < 0) {
        *err = errno;
        return -1;
    }
    return w >= c->dir[side].w0 + st.redirected;
}

static void poll_drains(struct gw_engine *e)
{
    size_t k = 0;
    for (size_t j = 0; j < e->ndrains; j++) {
        struct drain_item it = e->drains[j];
        struct conn *c = slot(e, it.id);
        if (c->state != LIVE || c->gen != it.gen)
            continue;
        struct dir *d = &c->dir[it.side];
        if (d->kern) {  /* else: waiting for passed bytes at EOF, read again (step) */
            int err = 0;
            int r = drained(e, c, it.side, &err);
            if (r < 0) {
                end(e, c, it.id, err);
                continue;
            }
            if (r == 0) {
                e->drains[k++] = it;
                continue;
            }
        }
        d->kern = d->drain = 0;
        d->reading = 1;  /* level-triggered: what the psock holds, or the EOF, shows at once */
        watch(e, c, it.id, it.side);
    }
    e->ndrains = k;
}

/* The verdict's reports: directions turned over to user space. */
static void read_ring(struct gw_engine *e)
{
    uint64_t *cons_pos = e->ring_cons;
    uint64_t *prod_pos = e->ring_prod;
    char *data = (char *)e->ring_prod + e->page;
    uint64_t cons = __atomic_load_n(cons_pos, __ATOMIC_ACQUIRE);
    uint64_t prod = __atomic_load_n(prod_pos, __ATOMIC_ACQUIRE);
    while (cons < prod) {
        uint32_t *hdr = (uint32_t *)(data + (cons & (e->ring_bytes - 1)));
        uint32_t len = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
        if (len & BPF_RINGBUF_BUSY_BIT)
            break;
        uint32_t n = len & ~(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT);
        if (!(len & BPF_RINGBUF_DISCARD_BIT) && n >= sizeof(struct gw_kr_event)) {
            struct gw_kr_event ev;
            memcpy(&ev, (char *)hdr + BPF_RINGBUF_HDR_SZ, sizeof ev);
            if (ev.slot < e->next_unused && ev.side < 2) {
                struct conn *c = slot(e, ev.slot);
                if (c->state == LIVE && c->gen == ev.gen)
                    hand_back(e, c, ev.slot, (int)ev.side);
            }
        }
        cons += (BPF_RINGBUF_HDR_SZ + n + 7) & ~7u;
        __atomic_store_n(cons_pos, cons, __ATOMIC_RELEASE);
    }
}

/* Mode kernel: a connection that has carried KR_AFTER turns of small messages, with nothing
 * held in the engine (no leftovers, no pipe: a direction that carried bulk stays here) and
 * neither direction ended, goes to the kernel. */
static void to_kernel(struct gw_engine *e, struct conn *c, uint32_t id)
{
    for (int i = 0; i < 2; i++) {
        struct dir *d = &c->dir[i];
        if (d->rest || d->spliced || d->done || d->writing)
            return;
    }
    if (kernel_start(e, c, id) < 0) {
        c->mode = GW_MODE_AUTO;  /* not again */
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (c->dir[i].kern)
            c->dir[i].reading = 0;  /* the kernel reads src now */
        watch(e, c, id, i);
    }
}

/* A psock src in user space came to a pause (EAGAIN) or to what recv calls EOF: the end of
 * the stream only once its FIN came and every byte the verdict passed has been read (see
 * kernel_relay.c). 1: EOF; 0: not yet; -1 with *err. */
static int psock_eof(struct gw_engine *e, struct conn *c, int i, int recv_eof, int *err)
{
    struct dir *d = &c->dir[i];
    struct tcp_info ti;
    struct gw_kr_state st;
    if (!d->fin && !recv_eof)
        return 0;
    if (settled(e, c, i, 0, &ti, &st, err) < 0)
        return -1;
    switch (ti.tcpi_state) {  /* states after a FIN came in (include/net/tcp_states.h) */
    case 6 /* TIME_WAIT */: case 7 /* CLOSE */: case 8 /* CLOSE_WAIT */: case 9 /* LAST_ACK */:
    case 11 /* CLOSING */:
        d->fin = 1;
    }
    if (!d->fin)
        return 0;
    return d->got >= st.passed;
}

/* One direction's turn (Relay._step). 1 when the connection ended. */
static int step(struct gw_engine *e, struct conn *c, uint32_t id, int i)
{
    struct dir *d = &c->dir[i];
    if (d->done)
        return 0;
    size_t moved = 0;
    int err = 0;
    int status = move(e, c, i, &moved, &err);
    if (moved)
        __atomic_store_n(&d->bytes, d->bytes + moved, __ATOMIC_RELAXED);
    if (status >= 0 && d->psock && (status & (SRC_EOF | SRC_DRAINED))) {
        int r = psock_eof(e, c, i, (status & SRC_EOF) != 0, &err);
        if (r < 0)
            status = -1;
        else if (r > 0)
            status = (status & ~SRC_DRAINED) | SRC_EOF;
        else if (status & SRC_EOF) {  /* passed bytes still on their way: look again soon */
            status &= ~SRC_EOF;
            set_reading(e, c, id, i, 0);
            if (push_drain(e, c, id, i) < 0) {
                err = ENOMEM;
                status = -1;
            } else {
                d->drain = 1;
                return 0;
            }
        }
    }
    if (status < 0) {
        end(e, c, id, err);
        return 1;
    }
    if (status & DST_BLOCKED) {
        set_reading(e, c, id, i, 0);
        set_writing(e, c, id, i, 1);
        return 0;
    }
    set_writing(e, c, id, i, 0);
    if (status & SRC_EOF) {  /* with nothing pending: both loops read only when flushed */
        set_reading(e, c, id, i, 0);
        d->done = 1;
        shutdown(c->fd[1 - i], SHUT_WR);
        if (c->dir[1 - i].done) {
            end(e, c, id, 0);
            return 1;
        }
        return 0;
    }
    set_reading(e, c, id, i, 1);
    if (c->mode == GW_MODE_KERNEL && moved && !c->in_map && ++c->turns >= KR_AFTER)
        to_kernel(e, c, id);
    return 0;
}

static void start(struct gw_engine *e, struct conn *c, uint32_t id)
{
    c->state = LIVE;
    for (int i = 0; i < 2; i++) {
        if (c->dir[i].rest) {
            if (step(e, c, id, i))
                return;
        } else {
            set_reading(e, c, id, i, 1);  /* level-triggered: queued bytes show at once */
        }
    }
}

static void on_event(struct gw_engine *e, uint64_t data, uint32_t events)
{
    uint32_t id = (uint32_t)(data >> 1), gen = (uint32_t)(data >> 33);
    int side = (int)(data & 1);
    struct conn *c = slot(e, id);
    if (c->state != LIVE || c->gen != gen)
        return;  /* ended earlier in this batch */
    if (c->in_map) {
        if (events & (EPOLLRDHUP | EPOLLHUP))
            c->dir[side].fin = 1;
        if (events & EPOLLERR) {  /* the kernel's writes may have failed: nothing is sure */
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd[side], SOL_SOCKET, SO_ERROR, &err, &len);
            end(e, c, id, err ? err : ECONNRESET);
            return;
        }
        if (c->dir[side].kern && (events & (EPOLLRDHUP | EPOLLHUP)))
            hand_back(e, c, id, side);  /* src's FIN: the rest as in user space */
    }
    /* fd[side] is the destination of dir[1 - side] and the source of dir[side] */
    if (c->dir[1 - side].writing && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
        if (step(e, c, id, 1 - side))
            return;
    if (c->dir[side].reading && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        step(e, c, id, side);
}

/* Take the queues the owner filled (under the lock), then act on them (without it). */
static int take_requests(struct gw_engine *e)
{
    pthread_mutex_lock(&e->mu);
    size_t n = e->added.len + e->aborts.len;
    if (n > e->work_cap) {
        uint32_t *w = realloc(e->work, n * sizeof *w);
        if (!w) {  /* try again on the next wake-up */
            pthread_mutex_unlock(&e->mu);
            signal_fd(e->wake_fd);
            return 0;
        }
        e->work = w;
        e->work_cap = n;
    }
    size_t nadd = e->added.len;
    memcpy(e->work, e->added.items, nadd * sizeof(uint32_t));
    memcpy(e->work + nadd, e->aborts.items, e->aborts.len * sizeof(uint32_t));
    e->added.len = e->aborts.len = 0;
    int stop = e->stop;
    pthread_mutex_unlock(&e->mu);
    for (size_t k = 0; k < n; k++) {
        uint32_t id = e->work[k] & ~GRACEFUL;
        struct conn *c = slot(e, id);
        if (k < nadd) {
            start(e, c, id);
            continue;
        }
        int graceful = (e->work[k] & GRACEFUL) != 0;  /* an end request: close, not reset */
        if (c->state == LIVE)
            end(e, c, id, graceful ? 0 : ECONNABORTED);
    }
    return stop;
}

static void *run(void *arg)
{
    struct gw_engine *e = arg;
    struct epoll_event ev[BATCH];
    const struct timespec poll = {.tv_nsec = DRAIN_POLL_NS};
    for (;;) {
        int n = epoll_pwait2(e->ep, ev, BATCH, e->ndrains ? &poll : NULL, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        for (int k = 0; k < n; k++) {
            if (ev[k].data.u64 == WAKE) {
                drain_fd(e->wake_fd);
                if (take_requests(e))
                    return NULL;
            } else if (ev[k].data.u64 == RING) {
                read_ring(e);
            } else {
                on_event(e, ev[k].data.u64, ev[k].events);
            }
        }
        if (e->ndrains)
            poll_drains(e);
    }
}

/* ---- the owner's side ---- */

struct gw_engine *gw_engine_new(uint32_t max_conns)
{
    if (max_conns >= GRACEFUL) {
        errno = EINVAL;
        return NULL;
    }
    struct gw_engine *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->ep = e->wake_fd = e->done_fd = -1;
    e->kr_socks = e->kr_state = e->kr_ring = -1;
    e->max_conns = max_conns;
    e->free_head = NONE;
    e->added.size = e->aborts.size = sizeof(uint32_t);
    e->ended.size = sizeof(struct gw_ended);
    pthread_mutex_init(&e->mu, NULL);
    e->chunks = calloc(max_conns / SLOTS_PER_CHUNK + 1, sizeof *e->chunks);
    e->scratch = malloc(CHUNK);
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!e->chunks || !e->scratch || e->ep < 0 || e->wake_fd < 0 || e->done_fd < 0)
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE};
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, e->wake_fd, &ev) < 0)
        goto fail;
    /* Signals stay with the owner's threads (Python handles them in its main thread). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&e->thread, NULL, run, e);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0)
        return e;
    errno = rc;
fail:;
    int saved = errno;
    if (e->ep >= 0)
        close(e->ep);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    if (e->done_fd >= 0)
        close(e->done_fd);
    free(e->chunks);
    free(e->scratch);
    pthread_mutex_destroy(&e->mu);
    free(e);
    errno = saved;
    return NULL;
}

int gw_engine_done_fd(const struct gw_engine *e)
{
    return e->done_fd;
}

int gw_engine_kernel(struct gw_engine *e, int socks_fd, int state_fd, int ring_fd,
                     size_t ring_bytes)
{
    if (e->kr_socks >= 0 || ring_bytes == 0 || (ring_bytes & (ring_bytes - 1))) {
        errno = EINVAL;
        return -1;
    }
    long page = sysconf(_SC_PAGESIZE);
    int fds[3] = {fcntl(socks_fd, F_DUPFD_CLOEXEC, 0), fcntl(state_fd, F_DUPFD_CLOEXEC, 0),
                  fcntl(ring_fd, F_DUPFD_CLOEXEC, 0)};
    void *cons = MAP_FAILED, *prod = MAP_FAILED;
    if (fds[0] < 0 || fds[1] < 0 || fds[2] < 0)
        goto fail;
    /* the ring: our consumer position (read-write), then the producer position and the data,
     * mapped twice in a row so a record never wraps (read-only) */
    cons = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, fds[2], 0);
    prod = mmap(NULL, (size_t)page + 2 * ring_bytes, PROT_READ, MAP_SHARED, fds[2], page);
    if (cons == MAP_FAILED || prod == MAP_FAILED)
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = RING};
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, fds[2], &ev) < 0)
        goto fail;
    pthread_mutex_lock(&e->mu);  /* published to the engine thread with the first add */
    e->page = page;
    e->ring_cons = cons;
    e->ring_prod = prod;
    e->ring_bytes = ring_bytes;
    e->ring_map_len = (size_t)page + 2 * ring_bytes;
    e->kr_socks = fds[0];
    e->kr_state = fds[1];
    e->kr_ring = fds[2];
    pthread_mutex_unlock(&e->mu);
    return 0;
fail:;
    int saved = errno;
    if (cons != MAP_FAILED)
        munmap(cons, (size_t)page);
    if (prod != MAP_FAILED)
        munmap(prod, (size_t)page + 2 * ring_bytes);
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    errno = saved;
    return -1;
}

uint32_t gw_engine_in_kernel(const struct gw_engine *e)
{
    return __atomic_load_n(&e->in_kernel, __ATOMIC_RELAXED);
}

uint32_t gw_engine_open(const struct gw_engine *e)
{
    return __atomic_load_n(&e->open, __ATOMIC_RELAXED);
}

static char *dup_bytes(const char *p, size_t n)
{
    char *out = malloc(n);
    if (out)
        memcpy(out, p, n);
    return out;
}

int64_t gw_engine_add(struct gw_engine *e, int a, int b, const char *to_b, size_t to_b_len,
                      const char *to_a, size_t to_a_len, int mode)
{
    char *rest[2] = {NULL, NULL};
    size_t rest_len[2] = {to_b_len, to_a_len};
    const char *src[2] = {to_b, to_a};
    int err = 0;
    for (int i = 0; i < 2; i++)
        if (rest_len[i] && !(rest[i] = dup_bytes(src[i], rest_len[i])))
            err = ENOMEM;
    uint32_t id = NONE;
    pthread_mutex_lock(&e->mu);
    if (!err && e->stop)
        err = ESHUTDOWN;
    if (!err) {
        if (e->free_head != NONE) {
            id = e->free_head;
            e->free_head = slot(e, id)->next_free;
        } else if (e->next_unused >= e->max_conns) {
            err = EMFILE;
        } else {
            uint32_t k = e->next_unused / SLOTS_PER_CHUNK;
            if (!e->chunks[k] && !(e->chunks[k] = calloc(SLOTS_PER_CHUNK, sizeof(struct conn))))
                err = ENOMEM;
            else
                id = e->next_unused++;
        }
    }
    int first = e->added.len == 0 && e->aborts.len == 0;  /* else a wake-up is on its way */
    if (!err && push(&e->added, &id) < 0) {
        struct conn *c = slot(e, id);
        c->next_free = e->free_head;
        e->free_head = id;
        err = ENOMEM;
    }
    if (!err) {
        struct conn *c = slot(e, id);
        uint32_t gen = (c->gen + 1) & 0x7fffffff;
        memset(c, 0, sizeof *c);
        c->gen = gen;
        c->fd[0] = a;
        c->fd[1] = b;
        c->mode = (uint8_t)mode;
        c->state = QUEUED;
        for (int i = 0; i < 2; i++) {
            c->dir[i].pipe_r = c->dir[i].pipe_w = -1;
            c->dir[i].rest = rest[i];
            c->dir[i].rest_len = rest_len[i];
            c->dir[i].spliced = mode == GW_MODE_SPLICE;
        }
        __atomic_store_n(&e->open, e->open + 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&e->mu);
    if (err) {
        free(rest[0]);
        free(rest[1]);
        reset_fd(a);
        reset_fd(b);
        close(a);
        close(b);
        errno = err;
        return -1;
    }
    if (first)
        signal_fd(e->wake_fd);
    return id;
}

static struct conn *open_conn(struct gw_engine *e, uint32_t id)
{
    if (id >= e->next_unused)
        return NULL;
    struct conn *c = slot(e, id);
    return c->state == QUEUED || c->state == LIVE ? c : NULL;
}

int gw_engine_end(struct gw_engine *e, uint32_t id, int reset)
{
    uint32_t item = id | (reset ? 0 : GRACEFUL);
    pthread_mutex_lock(&e->mu);
    int first = e->added.len == 0 && e->aborts.len == 0;
    int rc = id < GRACEFUL && open_conn(e, id) && push(&e->aborts, &item) == 0 ? 0 : -1;
    pthread_mutex_unlock(&e->mu);
    if (rc < 0) {
        errno = ESRCH;
        return -1;
    }
    if (first)
        signal_fd(e->wake_fd);
    return 0;
}

int gw_engine_bytes(struct gw_engine *e, uint32_t id, uint64_t out[2])
{
    pthread_mutex_lock(&e->mu);
    struct conn *c = open_conn(e, id);
    uint64_t cookie[2] = {0, 0};
    if (c) {
        out[0] = __atomic_load_n(&c->dir[0].bytes, __ATOMIC_RELAXED);
        out[1] = __atomic_load_n(&c->dir[1].bytes, __ATOMIC_RELAXED);
        if (c->state == LIVE && __atomic_load_n(&c->in_map, __ATOMIC_ACQUIRE)) {
            cookie[0] = c->dir[0].cookie;
            cookie[1] = c->dir[1].cookie;
        }
    }
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < 2; i++) {  /* what the kernel carried (a lookup of a gone entry fails) */
        struct gw_kr_state st;
        if (cookie[i] && bpf_map(BPF_MAP_LOOKUP_ELEM, e->kr_state, &cookie[i], &st, 0) == 0)
            out[i] += st.redirected;
    }
    if (!c) {
        errno = ESRCH;
        return -1;
    }
    return 0;
}

size_t gw_engine_done(struct gw_engine *e, struct gw_ended *out, size_t n)
{
    drain_fd(e->done_fd);  /* first: an end queued after this read signals again */
    pthread_mutex_lock(&e->mu);
    size_t k = e->ended.len < n ? e->ended.len : n;
    struct gw_ended *items = e->ended.items;
    for (size_t j = 0; j < k; j++) {
        out[j] = items[j];
        struct conn *c = slot(e, items[j].id);
        c->state = FREE;
        c->next_free = e->free_head;
        e->free_head = items[j].id;
    }
    memmove(items, items + k, (e->ended.len - k) * sizeof *items);
    e->ended.len -= k;
    __atomic_store_n(&e->open, e->open - (uint32_t)k, __ATOMIC_RELAXED);
    int more = e->ended.len > 0;
    pthread_mutex_unlock(&e->mu);
    if (more)
        signal_fd(e->done_fd);
    return k;
}

void gw_engine_stop(struct gw_engine *e)
{
    pthread_mutex_lock(&e->mu);
    int stopped = e->stop;
    e->stop = 1;
    pthread_mutex_unlock(&e->mu);
    if (stopped)
        return;
    signal_fd(e->wake_fd);
    pthread_join(e->thread, NULL);
    /* The thread is gone: what it left open is reset here, in this thread. */
    for (uint32_t id = 0; id < e->next_unused; id++) {
        struct conn *c = slot(e, id);
        if (c->state == QUEUED || c->state == LIVE)
            end(e, c, id, ECONNABORTED);
    }
}

void gw_engine_free(struct gw_engine *e)
{
    if (!e)
        return;
    gw_engine_stop(e);
    while (e->npipes) {
        e->npipes--;
        close(e->pipes[e->npipes][0]);
        close(e->pipes[e->npipes][1]);
    }
    for (uint32_t k = 0; k <= e->max_conns / SLOTS_PER_CHUNK; k++)
        free(e->chunks[k]);
    free(e->chunks);
    free(e->added.items);
    free(e->aborts.items);
    free(e->ended.items);
    free(e->work);
    free(e->scratch);
    free(e->drains);
    if (e->kr_ring >= 0) {
        munmap(e->ring_cons, (size_t)e->page);
        munmap(e->ring_prod, e->ring_map_len);
        close(e->kr_socks);
        close(e->kr_state);
        close(e->kr_ring);
    }
    close(e->ep);
    close(e->wake_fd);
    close(e->done_fd);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
