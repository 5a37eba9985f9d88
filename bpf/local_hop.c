/* Local hop acceleration: the loopback connection inside a pod between the
 * app's socket and the socket the forwarder accepted. sock_ops puts both
 * ends in a SOCKHASH when they are established; the sk_msg program then
 * moves each sendmsg straight into the peer's psock ingress queue
 * (bpf_msg_redirect_hash with BPF_F_INGRESS), skipping the TCP stack.
 *
 * Backpressure. A redirected message is charged to the receiver by
 * bpf_tcp_ingress() (net/ipv4/tcp_bpf.c) with sk_{r,w}mem_schedule and
 * sk_mem_charge, limited only by the global tcp_mem, never by the receiver's
 * rcvbuf, and the sender's sndbuf is not charged at all: a sender into a
 * receiver that never reads queues gigabytes. So a sender may have at most
 * GW_HOP_BUDGET redirected bytes that its peer has not read. Unread is
 * (bytes this socket redirected, gw_hop_sent) minus (bytes the peer's owner
 * says it has read, gw_hop_read, written from user space; absent = 0, so for
 * a peer that does not report, an unmodified app, the budget is simply the
 * total). When a message would take unread past the budget, this and every
 * later message of the socket take SK_PASS, forever (with apply_bytes, so
 * the program stops running for them): the rest of the stream flows over
 * normal TCP with its window, rcvbuf and sndbuf. A stalled receiver then
 * holds at most GW_HOP_BUDGET redirected bytes plus the normal TCP buffers.
 * A late report only makes the fall-back come earlier, never lets more in.
 *
 * Order. The stream is always [redirected prefix][TCP suffix], never
 * interleaved: a socket that passed once never redirects again, and a
 * redirect is enqueued on the receiver synchronously inside the sender's
 * sendmsg, before any later byte is handed to TCP. tcp_bpf_recvmsg() reads
 * the psock ingress queue first and falls through to tcp_recvmsg() only when
 * that queue is empty, so the receiver sees the prefix before the suffix.
 * (That is also why the fall-back cannot be undone: redirected bytes would
 * overtake TCP bytes still queued.) A reader using splice() would not see
 * the prefix: tcp_splice_read() reads only sk_receive_queue. Peers of an
 * accelerated socket must read with recv/read.
 *
 * Off by default: once in a SOCKHASH a socket's reader also changes (a
 * blocking recv can return EAGAIN, see tcp_bpf_recvmsg), and a fallen-back
 * socket is slower than plain TCP. Numbers in tests/bpf/test_local_hop.py.
 *
 * Config (cflags): GW_HOP_PORT, the forwarder listener port (host order)
 * whose connections are accelerated; GW_HOP_BUDGET, bytes.
 */
#include "glasswing.h"

#ifndef GW_HOP_PORT
#error "GW_HOP_PORT must be set by the loader (-DGW_HOP_PORT=15001)"
#endif
#ifndef GW_HOP_BUDGET
#define GW_HOP_BUDGET (1ULL << 20)
#endif

#define GW_HOP_PASSED (~0ULL)
#define GW_LOOPBACK_NET 0x7f /* 127.0.0.0/8, first byte of the network-order address */

/* Both ends of accelerated connections, keyed from each end's own view. */
BPF_SOCKHASH(gw_hop_socks, struct tuple_key, 65536);
/* Sender: bytes it has redirected, or GW_HOP_PASSED once it fell back to TCP.
 * Freed with the socket. */
BPF_SK_STORAGE(gw_hop_sent, __u64);
/* Receiver's owner: bytes it has read, keyed by the receiving socket's own
 * view of the connection, written only from user space. sk_msg cannot look
 * up the peer socket (a SOCKHASH lookup returns a reference it has no
 * bpf_sk_release to drop), so the peer's state lives under its tuple. sock_ops
 * deletes the key when a connection is established, so a stale entry (owner
 * died without deleting it) never counts for a new connection; LRU keeps
 * leftovers from filling the map. */
BPF_TABLE("lru_hash", struct tuple_key, __u64, gw_hop_read, 65536);

static __always_inline __u16 port_host(__u32 remote_port)
{
	/* remote_port holds the network-order port in its upper 16 bits. */
	return bpf_ntohs((__u16)(remote_port >> 16));
}

int gw_hop_sockops(struct bpf_sock_ops *skops)
{
	struct tuple_key key = {};
	__u16 rport;

	if (skops->family != 2 /* AF_INET */)
		return 1;
	if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	    skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	/* Loopback only: the peer socket is in this network namespace. */
	if ((skops->remote_ip4 & 0xff) != GW_LOOPBACK_NET)
		return 1;
	rport = port_host(skops->remote_port);
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ? rport != GW_HOP_PORT
							     : skops->local_port != GW_HOP_PORT)
		return 1;
	key.netns = bpf_get_netns_cookie(skops);
	key.local_ip = skops->local_ip4;
	key.remote_ip = skops->remote_ip4;
	key.local_port = (__u16)skops->local_port;
	key.remote_port = rport;
	gw_hop_read.delete(&key);
	/* A full map just leaves this connection on plain TCP. */
	gw_hop_socks.sock_hash_update(skops, &key, BPF_NOEXIST);
	return 1;
}

/* The verdict then holds for the next GW_HOP_APPLY bytes without running
 * this program again (psock->apply_bytes): a socket that fell back pays for
 * tcp_bpf_sendmsg's copy into an sk_msg, but not for a program run per write. */
#define GW_HOP_APPLY (1U << 30)
static __always_inline int pass_for_good(struct sk_msg_md *msg)
{
	bpf_msg_apply_bytes(msg, GW_HOP_APPLY);
	return SK_PASS;
}

int gw_hop_msg(struct sk_msg_md *msg)
{
	struct tuple_key peer = {};
	struct bpf_sock *sk = msg->sk;
	__u64 *sent, *read, unread;
	long verdict;

	if (!sk)
		return SK_PASS;
	sent = gw_hop_sent.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!sent)
		return SK_PASS; /* no memory for the state: TCP from the start */
	if (*sent == GW_HOP_PASSED)
		return pass_for_good(msg);
	/* The peer's key is ours mirrored. */
	peer.netns = bpf_get_netns_cookie(msg);
	peer.local_ip = msg->remote_ip4;
	peer.remote_ip = msg->local_ip4;
	peer.local_port = port_host(msg->remote_port);
	peer.remote_port = (__u16)msg->local_port;
	unread = *sent;
	read = gw_hop_read.lookup(&peer);
	if (read)
		unread = *read < unread ? unread - *read : 0;
	if (unread + msg->size > GW_HOP_BUDGET) {
		*sent = GW_HOP_PASSED;
		return pass_for_good(msg);
	}
	verdict = gw_hop_socks.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
	if (verdict != SK_PASS) {
		/* Peer not (yet) in the map: this and all later bytes go over TCP,
		 * so a redirect can never overtake bytes already sent by TCP. */
		*sent = GW_HOP_PASSED;
		return pass_for_good(msg);
	}
	/* Serialised: sk_msg runs under this socket's lock. */
	*sent += msg->size;
	return SK_PASS;
}
