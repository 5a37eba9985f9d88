/* loadgen: an open-loop HTTP/1.1 load generator (wrk2's method), for `glasswing bench http`.
 *
 *   loadgen HOST PORT PATH RATE SECONDS CONNECTIONS [WARMUP_SECONDS]
 *
 * Request k is scheduled at t0 + k / RATE, whatever happened to earlier ones, and goes out
 * on the first of CONNECTIONS keep-alive connections that is free (no pipelining). Its
 * latency is measured from its scheduled time, not from when it was sent: a stall makes
 * every request scheduled during it late, so the percentiles include the wait
 * (no coordinated omission). Requests scheduled in the first WARMUP seconds (default 1)
 * are sent but not measured.
 *
 * One thread, epoll, non-blocking sockets; responses must carry Content-Length (nginx's do).
 * Prints one JSON line: scheduled, completed, errors, non_2xx, unsent (due but never sent by
 * the end), achieved rate, and latency percentiles in microseconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF (256 * 1024)

struct conn {
	int fd;
	int busy;           /* a request is in flight */
	double sched;       /* its scheduled time */
	size_t sent, rlen;  /* bytes of the request written, of the response read */
	char rbuf[RBUF];
};

static struct sockaddr_in addr;
static char req[1024];
static size_t req_len;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int dial(int ep, struct conn *c)
{
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("connect");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (nonblock(fd) < 0) {
		close(fd);
		return -1;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	c->fd = fd;
	c->busy = 0;
	c->rlen = 0;
	return 0;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(double *v, long n, double p)
{
	if (n == 0)
		return 0;
	long i = (long)(p / 100.0 * n);
	if (i >= n)
		i = n - 1;
	return v[i] * 1e6;
}

/* Parse a complete response in c->rbuf: its total length, or 0 when incomplete, -1 if bad. */
static long response_len(struct conn *c, int *status)
{
	c->rbuf[c->rlen < RBUF ? c->rlen : RBUF - 1] = 0;
	char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
	if (!end)
		return c->rlen >= RBUF - 1 ? -1 : 0;
	*status = atoi(c->rbuf + 9);
	long hl = end + 4 - c->rbuf, cl = -1;
	for (char *p = c->rbuf; p && p < end; p = strstr(p, "\r\n")) {
		p += 2;
		if (!strncasecmp(p, "content-length:", 15)) {
			cl = atol(p + 15);
			break;
		}
	}
	if (cl < 0)
		return -1;
	return (size_t)(hl + cl) <= c->rlen ? hl + cl : 0;
}

int main(int argc, char **argv)
{
	if (argc < 7) {
		fprintf(stderr, "usage: %s HOST PORT PATH RATE SECONDS CONNECTIONS [WARMUP]\n", argv[0]);
		return 2;
	}
	double rate = atof(argv[4]), secs = atof(argv[5]);
	int nconn = atoi(argv[6]);
	double warm = argc > 7 ? atof(argv[7]) : 1.0;
	addr.sin_family = AF_INET;
	addr.sin_port = htons(atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 || rate <= 0 || secs <= 0 || nconn < 1) {
		fprintf(stderr, "loadgen: bad arguments\n");
		return 2;
	}
	req_len = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: loadgen\r\n\r\n",
			   argv[3], argv[1]);
	int ep = epoll_create1(0);
	struct conn *cs = calloc(nconn, sizeof(*cs));
	for (int i = 0; i < nconn; i++)
		if (dial(ep, &cs[i]) < 0)
			return 1;
	long total = (long)(rate * (secs + warm));
	double *lat = malloc(sizeof(double) * (total + 1));
	long nlat = 0, next = 0, completed = 0, errors = 0, non2xx = 0;
	double t0 = now() + 0.05, tend = t0 + total / rate, drain = tend + 2.0;
	struct epoll_event evs[64];
	for (;;) {
		double t = now();
		if (t >= drain)
			break;
		/* send every due request there is a free connection for */
		for (int i = 0; i < nconn && next < total && t0 + next / rate <= t; i++) {
			struct conn *c = &cs[i];
			if (c->busy || c->fd < 0)
				continue;
			c->busy = 1;
			c->sched = t0 + next / rate;
			c->sent = 0;
			c->rlen = 0;
			next++;
			ssize_t w = write(c->fd, req, req_len);
			if (w > 0)
				c->sent = w;
			if (w < 0 || (size_t)w != req_len) { /* 60-byte requests fit any socket buffer */
				errors++;
				close(c->fd);
				c->fd = -1;
				dial(ep, c);
			}
		}
		int busy = 0;
		for (int i = 0; i < nconn; i++)
			busy += cs[i].busy;
		if (next >= total && busy == 0)
			break;
		int timeout = 10;
		if (next < total) {
			double wait = t0 + next / rate - now();
			timeout = wait <= 0 ? 0 : (int)(wait * 1000);
			if (busy == nconn)
				timeout = 10;
		}
		int n = epoll_wait(ep, evs, 64, timeout);
		for (int e = 0; e < n; e++) {
			struct conn *c = evs[e].data.ptr;
			ssize_t r = read(c->fd, c->rbuf + c->rlen, RBUF - 1 - c->rlen);
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (r <= 0) {
				if (c->busy)
					errors++;
				epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
				close(c->fd);
				c->fd = -1;
				dial(ep, c);
				continue;
			}
			c->rlen += r;
			int status = 0;
			long len = response_len(c, &status);
			if (len == 0)
				continue;
			double done = now();
			if (len < 0 || !c->busy) {
				errors++;
				epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
				close(c->fd);
				c->fd = -1;
				dial(ep, c);
				continue;
			}
			completed++;
			if (status < 200 || status > 299)
				non2xx++;
			if (c->sched >= t0 + warm)
				lat[nlat++] = done - c->sched;
			c->busy = 0;
			c->rlen = 0;
		}
	}
	double elapsed = now() - t0;
	long inflight = 0;
	for (int i = 0; i < nconn; i++)
		inflight += cs[i].busy;
	qsort(lat, nlat, sizeof(double), cmp);
	printf("{\"scheduled\": %ld, \"completed\": %ld, \"errors\": %ld, \"non_2xx\": %ld, "
	       "\"unsent\": %ld, \"unanswered\": %ld, \"measured\": %ld, \"rate\": %.1f, "
	       "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
	       total, completed, errors, non2xx, total - next, inflight, nlat, completed / elapsed,
	       pct(lat, nlat, 50), pct(lat, nlat, 90), pct(lat, nlat, 99), pct(lat, nlat, 99.9),
	       nlat ? lat[nlat - 1] * 1e6 : 0.0);
	return errors || non2xx || inflight || next < total ? 1 : 0;
}
