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
 *
 * Mode "kernel" (the kernel relay's user-space half) is in kernel_mode.c; the state both
 * files work on is in engine_internal.h.
 */
#define _GNU_SOURCE
#include "engine_internal.h"
#include "splice_loop.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
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
#define BATCH 256
#define WAKE UINT64_MAX
#define NONE UINT32_MAX
#define GRACEFUL (1u << 31)       /* in the aborts queue: close instead of reset */

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

void conn_watch(struct gw_engine *e, struct conn *c, uint32_t id, int side)
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
        conn_watch(e, c, id, i);
    }
}

static void set_writing(struct gw_engine *e, struct conn *c, uint32_t id, int i, int on)
{
    if (c->dir[i].writing != on) {
        c->dir[i].writing = on;
        conn_watch(e, c, id, 1 - i);
    }
}

static void reset_fd(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

/* Close (error 0) or reset both sides, give buffers back and queue the end for the owner. */
void conn_end(struct gw_engine *e, struct conn *c, uint32_t id, int error)
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
    if (c->in_map)  /* the sockets left the SOCKHASH when closed: no verdict runs now */
        kernel_leave(e, c, out.bytes);
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
        conn_end(e, c, id, err);
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
            conn_end(e, c, id, 0);
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
    if (c->in_map && kernel_event(e, c, id, side, events))
        return;
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
            conn_end(e, c, id, graceful ? 0 : ECONNABORTED);
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
    kernel_bytes(e, cookie, out);  /* what the kernel carried */
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
            conn_end(e, c, id, ECONNABORTED);
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
    kernel_free(e);
    close(e->ep);
    close(e->wake_fd);
    close(e->done_fd);
    pthread_mutex_destroy(&e->mu);
    free(e);
}
