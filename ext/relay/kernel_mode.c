/* The relay engine's mode "kernel" (see engine.h): the user-space half of bpf/kernel_relay.c,
 * whose opening comment has the protocol. A connection that has carried KR_AFTER turns of
 * small messages goes into the kernel relay's SOCKHASH (kernel_start); the verdict program
 * then carries its bytes socket to socket and the engine only watches for FIN and errors
 * (kernel_event). A direction the verdict turns over (bulk, reported on the ring: read_ring)
 * or whose source got its FIN is handed back (hand_back) and read in user space once the
 * other socket has written every byte the kernel took (poll_drains); a psock source is at
 * its end only when its FIN came and every byte the verdict passed was read (psock_eof).
 *
 * Engine thread only, except gw_engine_kernel and gw_engine_in_kernel (the owner's) and
 * kernel_bytes (the owner's, under nothing: the map lookup needs no lock).
 */
#define _GNU_SOURCE
#include "engine_internal.h"
#include "kernel_relay.h"  /* bpf/: struct gw_kr_state, gw_kr_event */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

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

int push_drain(struct gw_engine *e, struct conn *c, uint32_t id, int side)
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
    conn_watch(e, c, id, side);
    if (push_drain(e, c, id, side) < 0)
        conn_end(e, c, id, ENOMEM);
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

void poll_drains(struct gw_engine *e)
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
                conn_end(e, c, it.id, err);
                continue;
            }
            if (r == 0) {
                e->drains[k++] = it;
                continue;
            }
        }
        d->kern = d->drain = 0;
        d->reading = 1;  /* level-triggered: what the psock holds, or the EOF, shows at once */
        conn_watch(e, c, it.id, it.side);
    }
    e->ndrains = k;
}

/* The verdict's reports: directions turned over to user space. */
void read_ring(struct gw_engine *e)
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
void to_kernel(struct gw_engine *e, struct conn *c, uint32_t id)
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
        conn_watch(e, c, id, i);
    }
}

/* A psock src in user space came to a pause (EAGAIN) or to what recv calls EOF: the end of
 * the stream only once its FIN came and every byte the verdict passed has been read (see
 * kernel_relay.c). 1: EOF; 0: not yet; -1 with *err. */
int psock_eof(struct gw_engine *e, struct conn *c, int i, int recv_eof, int *err)
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

/* on_event for a connection in the map, before its directions step: FIN and errors. 1 when
 * the connection ended. */
int kernel_event(struct gw_engine *e, struct conn *c, uint32_t id, int side, uint32_t events)
{
    if (events & (EPOLLRDHUP | EPOLLHUP))
        c->dir[side].fin = 1;
    if (events & EPOLLERR) {  /* the kernel's writes may have failed: nothing is sure */
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd[side], SOL_SOCKET, SO_ERROR, &err, &len);
        conn_end(e, c, id, err ? err : ECONNRESET);
        return 1;
    }
    if (c->dir[side].kern && (events & (EPOLLRDHUP | EPOLLHUP)))
        hand_back(e, c, id, side);  /* src's FIN: the rest as in user space */
    return 0;
}

/* conn_end, for a connection in the map: the sockets left the SOCKHASH when closed (no verdict
 * runs now); what the kernel carried is added to bytes and the entries go. */
void kernel_leave(struct gw_engine *e, struct conn *c, uint64_t bytes[2])
{
    for (int i = 0; i < 2; i++) {
        struct gw_kr_state st;
        if (bpf_map(BPF_MAP_LOOKUP_ELEM, e->kr_state, &c->dir[i].cookie, &st, 0) == 0)
            bytes[i] += st.redirected;
        bpf_map(BPF_MAP_DELETE_ELEM, e->kr_state, &c->dir[i].cookie, NULL, 0);
    }
    c->in_map = 0;
    __atomic_store_n(&e->in_kernel, e->in_kernel - 1, __ATOMIC_RELAXED);
}

/* gw_engine_bytes (owner's thread): add what the kernel carried for the sockets whose cookie
 * is not 0 (a lookup of a gone entry fails). */
void kernel_bytes(struct gw_engine *e, const uint64_t cookie[2], uint64_t out[2])
{
    for (int i = 0; i < 2; i++) {
        struct gw_kr_state st;
        if (cookie[i] && bpf_map(BPF_MAP_LOOKUP_ELEM, e->kr_state, &cookie[i], &st, 0) == 0)
            out[i] += st.redirected;
    }
}

/* ---- the owner's side ---- */

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

/* gw_engine_free, once the thread is gone. */
void kernel_free(struct gw_engine *e)
{
    if (e->kr_ring >= 0) {
        munmap(e->ring_cons, (size_t)e->page);
        munmap(e->ring_prod, e->ring_map_len);
        close(e->kr_socks);
        close(e->kr_state);
        close(e->kr_ring);
    }
}
