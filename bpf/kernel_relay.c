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
 * Repeated bytes (kernel trap, seen on 6.18). TCP queues a segment that starts before
 * rcv_nxt but ends after it whole: a retransmission that overlaps what came, or, as seen on
 * loopback with two vCPUs, a spurious retransmission (reordering across CPUs) coalesced in
 * the socket backlog with the next new segment. tcp_recvmsg skips the head it has already
 * copied (copied_seq); tcp_read_skb, which feeds the verdict, hands over the whole skb, so
 * without care its head reaches the other socket or the psock queue a second time (the
 * bulk test saw one 65,483-byte loopback segment twice, 1 run in 30 to 60), and copied_seq
 * runs ahead of rcv_nxt by as much. So the verdict tracks each socket's next sequence number
 * (seq_next) and cuts what it has seen off the skb's front before anything else
 * (bpf_skb_adjust_room, at most 4095 bytes a call), counting it in `repeated`; the kernel
 * then accounts the skb by its new length, and every byte is carried and counted once.
 * tests/bpf/test_kernel_relay.py forges such a segment.
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

/* Offset of skb->cb in struct sk_buff (x86-64, unchanged since Linux 4.x), where TCP keeps
 * struct tcp_skb_cb: seq, end_seq, a u32, then tcp_flags. Read with bpf_probe_read_kernel
 * (the context pointer is the kernel's sk_buff; the loader runs as root, so the verifier lets
 * it through); each read is checked (end_seq - seq == len, plus one for a FIN), so a kernel
 * that moved them makes the check fail and the verdict only stops cutting repeats. */
#define GW_KR_SKB_CB 40
#define GW_KR_TCPHDR_FIN 0x01

struct gw_kr_tcp_cb {
	__u32 seq;
	__u32 end_seq;
	__u32 other;
	__u16 tcp_flags;
	__u16 pad;
};

/* The skb's TCP sequence number, or -1 when it cannot be read or does not add up. */
static __always_inline int skb_seq(struct __sk_buff *skb, __u32 *seq)
{
	struct gw_kr_tcp_cb cb = {};
	if (bpf_probe_read_kernel(&cb, sizeof(cb), (void *)skb + GW_KR_SKB_CB) < 0)
		return -1;
	__u32 fin = cb.tcp_flags & GW_KR_TCPHDR_FIN ? 1 : 0;
	if (cb.end_seq - cb.seq != skb->len + fin)
		return -1;
	*seq = cb.seq;
	return 0;
}

/* Cut n bytes off the front of skb: 0, or -1 when the kernel refused a step (then some may
 * be cut). */
static __always_inline int trim_head(struct __sk_buff *skb, __u32 n)
{
#pragma unroll
	for (int i = 0; i < GW_KR_TRIM_STEPS; i++) {
		if (n == 0)
			return 0;
		__u32 step = n < GW_KR_TRIM_STEP ? n : GW_KR_TRIM_STEP;
		if (bpf_skb_adjust_room(skb, -(__s32)step, 0, 0) < 0)
			return -1;
		n -= step;
	}
	return n ? -1 : 0;
}

/* Repeated bytes (see the opening comment): what of skb the verdict has seen already is cut
 * off, so the counters, the peer and the psock queue see every byte once. */
static __always_inline void skip_repeats(struct __sk_buff *skb, struct gw_kr_state *st)
{
	__u32 seq;
	__u32 len = skb->len;
	if (skb_seq(skb, &seq) < 0)
		return;
	__u32 end = seq + len;
	if (st->seq_known) {
		__s32 seen = (__s32)(st->seq_next - seq);
		if (seen > 0) {
			__u32 cut = (__u32)seen < len ? (__u32)seen : len;
			__u32 before = skb->len;
			trim_head(skb, cut);
			st->repeated += before - skb->len;
		}
		if ((__s32)(end - st->seq_next) <= 0)
			return;  /* nothing new (cannot come from TCP): keep seq_next */
	}
	st->seq_next = end;
	st->seq_known = 1;
}

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
		__u32 seq;
		if (skb_seq(skb, &seq) == 0) {
			user.seq_next = seq + skb->len;
			user.seq_known = 1;
		}
		if (gw_kr_state.insert(&cookie, &user) == 0)
			return SK_PASS;
		st = gw_kr_state.lookup(&cookie);  /* the engine's entry came first */
		if (!st)
			return SK_PASS;
	}
	skip_repeats(skb, st);
	if (skb->len == 0)
		return SK_DROP;  /* all seen before (cannot come from TCP) */
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
