/* Helpers for the cgroup sock_addr programs (connect4, sendmsg4, recvmsg4,
 * getpeername4): finding the forwarder's socket in the caller's namespace,
 * redirecting a destination while remembering it, and putting it back.
 * No map calls here: bcc rewrites those only in a program's own .c file. */
#ifndef GLASSWING_SOCKADDR_H
#define GLASSWING_SOCKADDR_H

#include "glasswing.h"

/* Is a socket bound to ip:port (network order) in the caller's own (pod)
 * namespace? A zero source matches no established socket, so this finds
 * the listener (TCP) or the bound socket (UDP). */
static __always_inline int gw_local_socket(struct bpf_sock_addr *ctx, __u32 ip, __u16 port, int udp)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *s;

	t.ipv4.daddr = ip;
	t.ipv4.dport = port;
	if (udp)
		s = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		s = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!s)
		return 0;
	bpf_sk_release(s);
	return 1;
}

/* Send the socket to ip:port instead, keeping what the app asked for in st
 * (the socket's storage) for getsockopt, getpeername4 and recvmsg4. */
static __always_inline void gw_redirect(struct bpf_sock_addr *ctx, struct orig_dst *st,
					__u32 ip, __u16 port, __u16 flags)
{
	st->ip = ctx->user_ip4;
	st->port = (__u16)ctx->user_port;
	st->flags = flags;
	st->redir_ip = ip;
	st->redir_port = port;
	ctx->user_ip4 = ip;
	ctx->user_port = port;
}

/* If the address the kernel reports is where we redirected to, report what
 * the app asked for instead. */
static __always_inline void gw_restore(struct bpf_sock_addr *ctx, struct orig_dst *rec)
{
	if (ctx->user_ip4 != rec->redir_ip || (__u16)ctx->user_port != rec->redir_port)
		return;
	ctx->user_ip4 = rec->ip;
	ctx->user_port = rec->port;
}

#endif
