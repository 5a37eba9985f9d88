/* Helpers for the cgroup sock_addr programs (connect4/6, sendmsg4/6,
 * recvmsg4/6, getpeername4/6): reading and writing the destination of either
 * family, finding the forwarder's socket in the caller's namespace, deciding
 * where a connect to a service goes, redirecting while remembering, and
 * putting the address back. No map calls here: bcc rewrites those only in a
 * program's own .c file, so programs look maps up and pass the results in.
 *
 * Addresses are 16 bytes, IPv4 ones mapped (glasswing.h). An AF_INET socket's
 * user_ip4 is read as ::ffff:a.b.c.d; an AF_INET6 socket's user_ip6 is taken
 * as it is, whether it holds a mapped IPv4 address (Java and gRPC C-core dial
 * IPv4 that way) or a native IPv6 one. Only what goes back into the ctx
 * differs: the last word for an AF_INET socket, all four for an AF_INET6 one.
 * The family argument is a constant, so each program keeps only its branch
 * (the verifier rejects user_ip6 in a `4` program and user_ip4 in a `6` one). */
#ifndef GLASSWING_SOCKADDR_H
#define GLASSWING_SOCKADDR_H

#include "glasswing.h"

#define GW_AF_INET 0  /* family argument: the ctx's user_ip4 */
#define GW_AF_INET6 1 /* family argument: the ctx's user_ip6, native or mapped */

/* Is ip ::ffff:a.b.c.d? */
static __always_inline int gw_mapped(const __u32 *ip)
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void gw_map4(__u32 *ip, __u32 ip4)
{
	ip[0] = 0;
	ip[1] = 0;
	ip[2] = bpf_htonl(0x0000ffff);
	ip[3] = ip4;
}

static __always_inline void gw_copy_ip(__u32 *to, const __u32 *from)
{
	to[0] = from[0];
	to[1] = from[1];
	to[2] = from[2];
	to[3] = from[3];
}

static __always_inline int gw_same_ip(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* The address in ctx (the destination; the source for recvmsg), 16 bytes. */
static __always_inline void gw_dst(struct bpf_sock_addr *ctx, int v6, __u32 *ip)
{
	if (v6) {
		ip[0] = ctx->user_ip6[0];
		ip[1] = ctx->user_ip6[1];
		ip[2] = ctx->user_ip6[2];
		ip[3] = ctx->user_ip6[3];
	} else {
		gw_map4(ip, ctx->user_ip4);
	}
}

/* Put ip:port into ctx. For an AF_INET socket ip is mapped (callers check). */
static __always_inline void gw_set_dst(struct bpf_sock_addr *ctx, int v6, const __u32 *ip, __u16 port)
{
	if (v6) {
		ctx->user_ip6[0] = ip[0];
		ctx->user_ip6[1] = ip[1];
		ctx->user_ip6[2] = ip[2];
		ctx->user_ip6[3] = ip[3];
	} else {
		ctx->user_ip4 = ip[3];
	}
	ctx->user_port = port;
}

/* Is a socket bound to ip:port (network order) in the caller's own (pod)
 * namespace? A zero source matches no established socket, so this finds
 * the listener (TCP) or the bound socket (UDP). A mapped ip is looked up as
 * IPv4 (the forwarder's AF_INET sockets, which an AF_INET6 socket reaches
 * through their mapped address), a native one as IPv6 (its IPV6_V6ONLY ones). */
static __always_inline int gw_local_socket(struct bpf_sock_addr *ctx, const __u32 *ip, __u16 port, int udp)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *s;
	__u32 len;

	if (gw_mapped(ip)) {
		t.ipv4.daddr = ip[3];
		t.ipv4.dport = port;
		len = sizeof(t.ipv4);
	} else {
		gw_copy_ip(t.ipv6.daddr, ip);
		t.ipv6.dport = port;
		len = sizeof(t.ipv6);
	}
	if (udp)
		s = bpf_sk_lookup_udp(ctx, &t, len, BPF_F_CURRENT_NETNS, 0);
	else
		s = bpf_sk_lookup_tcp(ctx, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!s)
		return 0;
	bpf_sk_release(s);
	return 1;
}

/* Is this the forwarder's own socket (its cgroup, or its mark)? Its connects
 * are never redirected: they would come back to the forwarder. */
static __always_inline int gw_ours(struct bpf_sock *sk, struct gw_config *cfg)
{
	return sk->mark == cfg->mark || bpf_get_current_cgroup_id() == cfg->fwd_cgroup_id;
}

/* The forwarder's address for destination dst: its IPv4 sockets for an IPv4
 * (or mapped) one, its IPv6 sockets for a native IPv6 one. */
static __always_inline const __u32 *gw_forwarder_ip(struct gw_config *cfg, const __u32 *dst)
{
	return gw_mapped(dst) ? cfg->outbound_ip : cfg->outbound_ip6;
}

/* A UDP datagram or connect to port 53 of dst goes to the forwarder's DNS
 * resolver when one is bound in the pod's namespace (in dst's family): returns
 * 1 with t (redir_ip, redir_port, flags) set. */
static __always_inline int gw_to_resolver(struct bpf_sock_addr *ctx, struct gw_config *cfg,
					  const __u32 *dst, struct orig_dst *t)
{
	const __u32 *fwd = gw_forwarder_ip(cfg, dst);

	if ((__u16)ctx->user_port != GW_DNS_PORT_N || !cfg->dns_port ||
	    !gw_local_socket(ctx, fwd, cfg->dns_port, 1))
		return 0;
	t->flags = GW_DNS;
	gw_copy_ip(t->redir_ip, fwd);
	t->redir_port = cfg->dns_port;
	return 1;
}

/* The endpoint slot fail-open and socket LB pick from: uniform over the
 * service's endpoints. */
static __always_inline __u32 gw_slot(struct svc_value *svc)
{
	return svc->count ? bpf_get_prandom_u32() % svc->count : 0;
}

/* A TCP connect to a service at dst goes to the forwarder's outbound listener
 * (in dst's family) if the service needs the forwarder and one listens in the
 * pod's namespace: returns 1 with t set. Else (0) the endpoint is picked in
 * the kernel. */
static __always_inline int gw_to_forwarder(struct bpf_sock_addr *ctx, struct gw_config *cfg,
					   const __u32 *dst, struct svc_value *svc, struct orig_dst *t)
{
	const __u32 *fwd = gw_forwarder_ip(cfg, dst);

	/* Socket load balancing: a service that needs no forwarder feature gets
	 * its endpoint picked here, and its bytes never reach userspace. */
	if (svc->flags & GW_SVC_SOCKET_LB || !gw_local_socket(ctx, fwd, cfg->outbound_port, 0))
		return 0;
	t->flags = GW_REDIRECTED;
	gw_copy_ip(t->redir_ip, fwd);
	t->redir_port = cfg->outbound_port;
	return 1;
}

/* Not to the forwarder: socket LB, or no forwarder and the pod fails open,
 * go to endpoint be, picked from slot gw_slot(svc): returns 1 with t set.
 * 0: the connect fails at once (EPERM), for a pod failing closed or a
 * service with no endpoint (or none an AF_INET socket can reach). */
static __always_inline int gw_to_endpoint(int v6, struct svc_value *svc, struct pod_settings *pod,
					  struct backend_value *be, struct orig_dst *t)
{
	if (!(svc->flags & GW_SVC_SOCKET_LB) && pod && pod->fail_mode == GW_FAIL_CLOSED)
		return 0;
	if (svc->count == 0 || !be || (!v6 && !gw_mapped(be->ip)))
		return 0;
	t->flags = GW_TRANSLATED;
	gw_copy_ip(t->redir_ip, be->ip);
	t->redir_port = be->port;
	return 1;
}

/* Send the socket to t's redir_ip:redir_port instead, keeping what the app
 * asked for (dst and the ctx's port) in st (the socket's storage) for
 * getsockopt, getpeername and recvmsg. */
static __always_inline void gw_redirect(struct bpf_sock_addr *ctx, int v6, const __u32 *dst,
					struct orig_dst *st, struct orig_dst *t)
{
	gw_copy_ip(st->ip, dst);
	st->port = (__u16)ctx->user_port;
	st->flags = t->flags;
	gw_copy_ip(st->redir_ip, t->redir_ip);
	st->redir_port = t->redir_port;
	gw_set_dst(ctx, v6, t->redir_ip, t->redir_port);
}

/* If the address the kernel reports is where we redirected to, report what
 * the app asked for instead (as the socket's family spells it). */
static __always_inline void gw_restore(struct bpf_sock_addr *ctx, int v6, struct orig_dst *rec)
{
	__u32 cur[4];

	if (!v6 && !gw_mapped(rec->ip))
		return;
	gw_dst(ctx, v6, cur);
	if (!gw_same_ip(cur, rec->redir_ip) || (__u16)ctx->user_port != rec->redir_port)
		return;
	gw_set_dst(ctx, v6, rec->ip, rec->port);
}

#endif
