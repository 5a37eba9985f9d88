/* Kernel relay: the bytes of an opaque connection go from one of the forwarder's sockets to
 * the other inside the kernel, with no wake-up of the forwarder per message.
 *
 * The relay engine (ext/relay/kernel_mode.c, mode "kernel") puts both sockets of a connection
 * in gw_kr_socks and an entry per socket in gw_kr_state; this stream verdict program then runs
 * for every skb a socket receives and redirects it to the egress of the other socket
 * (sk_psock_skb_redirect: the peer's psock backlog, sent by a kworker). That is the fastest
 * round trip for small messages, and slow for bulk (every skb goes through the backlog).
 *
 * So a direction carries bulk in user space: the first skb of GW_KR_BULK bytes or more turns
 * the direction over for good (user = 1). That skb and every later one take SK_PASS, into the
 * socket's own psock queue, where the engine reads them with recv (not splice:
 * tcp_splice_read sees only sk_receive_queue). The program reports the switch on
 * gw_kr_events; the engine then waits until every byte redirected before it has been
 * written to the other socket (redirected, against what the other socket has written since
 * it entered the map) before sending a byte of its own there, so the stream keeps its order.
 * A switch that cannot be reported (ring full) is not made: the direction stays in the
 * kernel.
 *
 * The engine holds verdicts off while it puts a connection in (SO_RCVLOWAT far above what
 * the receive window lets in: tcp_data_ready does not call the verdict), then lowers it to 1,
 * which runs the verdict over what queued meanwhile, in order.
 *
 * End of stream. A direction read in user space counts what it read against `passed`: a
 * psock's recv can report EAGAIN instead of EOF once the FIN was consumed (Linux 6.1), and
 * passed bytes can still wait in the psock's backlog when a FIN is seen, so the engine takes
 * EOF only when the FIN came and it has read every byte the program passed.
 *
 * One verdict runs at a time per socket (it runs under the socket's lock), so the plain
 * updates of a socket's entry do not race; the engine only reads them.
 */
#include <uapi/linux/bpf.h>

#include "kernel_relay.h"

/* Keyed by socket cookie (SO_COOKIE): both sockets of every connection in kernel mode. */
BPF_SOCKHASH(gw_kr_socks, __u64, GW_KR_MAX);
BPF_HASH(gw_kr_state, __u64, struct gw_kr_state, GW_KR_MAX);
BPF_RINGBUF_OUTPUT(gw_kr_events, GW_KR_RING_PAGES);

int gw_kr_verdict(struct __sk_buff *skb)
{
	/* A FIN alone comes as an skb without bytes (the FIN itself is TCP's: the engine sees
	 * RDHUP). Redirected, the backlog's send would return 0 and break the other socket
	 * with EPIPE (sk_psock_backlog); there is nothing in it to keep. */
	if (skb->len == 0)
		return SK_DROP;
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct gw_kr_state *st = gw_kr_state.lookup(&cookie);
	if (!st) {
		/* The engine is still putting this connection in: the socket is in the map, its
		 * entry not yet (the engine writes it only once both sockets are in, so a redirect
		 * never finds the peer missing). This direction then stays in user space from its
		 * first byte: whoever inserts the entry first wins, and the engine sees EEXIST. */
		struct gw_kr_state user = {.passed = skb->len, .user = 1};
		if (gw_kr_state.insert(&cookie, &user) == 0)
			return SK_PASS;
		st = gw_kr_state.lookup(&cookie);  /* the engine's entry came first */
		if (!st)
			return SK_PASS;
	}
	if (st->user) {
		st->passed += skb->len;
		return SK_PASS;
	}
	if (skb->len >= GW_KR_BULK) {
		struct gw_kr_event ev = {.slot = st->slot, .gen = st->gen, .side = st->side};
		if (gw_kr_events.ringbuf_output(&ev, sizeof(ev), 0) == 0) {
			st->user = 1;
			st->passed += skb->len;
			return SK_PASS;
		}
	}
	st->redirected += skb->len;
	__u64 peer = st->peer;
	return gw_kr_socks.sk_redirect_hash(skb, &peer, 0);
}
