/* Helpers for the cgroup sock_addr programs (connect4/6, sendmsg4,
 * recvmsg4/6, getpeername4/6): reading and writing the destination of either
 * family, finding the forwarder's socket in the caller's namespace, deciding
 * where a connect to a service goes, redirecting while remembering, and
 * putting the address back. No map calls here: bcc rewrites those only in a
 * program's own .c file, so programs look maps up and pass the results in.
 *
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d, RFC 4291 2.5.5.2) in an
 * AF_INET6 socket is an IPv4 destination: Java and gRPC C-core dial IPv4 that
 * way. The `6` programs act only on those, with the same maps and records as
 * the `4` ones (IPv4 addresses), and write back mapped addresses. */
#ifndef GLASSWING_SOCKADDR_H
#define GLASSWING_SOCKADDR_H

#include "glasswing.h"

#define GW_AF_INET 0  /* v6 argument: the ctx's user_ip4 */
#define GW_AF_INET6 1 /* v6 argument: the ctx's user_ip6, holding a mapped IPv4 address */

/* Is the IPv6 destination in ctx ::ffff:a.b.c.d? */
static __always_inline int gw_is_mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0x0000ffff);
}

/* The IPv4 destination (network order): user_ip4, or the last word of a mapped user_ip6. */
static __always_inline __u32 gw_dst_ip(struct bpf_sock_addr *ctx, int v6)
{
	return v6 ? ctx->user_ip6[3] : ctx->user_ip4;
}

static __always_inline void gw_set_dst(struct bpf_sock_addr *ctx, int v6, __u32 ip, __u16 port)
{
	if (v6) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = ip;
	} else {
		ctx->user_ip4 = ip;
	}
	ctx->user_port = port;
}

/* Is a socket bound to ip:port (network order) in the caller's own (pod)
 * namespace? A zero source matches no established socket, so this finds
 * the listener (TCP) or the bound socket (UDP). The tuple is IPv4 whatever
 * the caller's family: the forwarder's sockets are AF_INET, and an AF_INET6
 * socket reaches them through their mapped address. */
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

/* Is this the forwarder's own socket (its cgroup, or its mark)? Its connects
 * are never redirected: they would come back to the forwarder. */
static __always_inline int gw_ours(struct bpf_sock *sk, struct gw_config *cfg)
{
	return sk->mark == cfg->mark || bpf_get_current_cgroup_id() == cfg->fwd_cgroup_id;
}

/* A UDP datagram or connect to port 53 goes to the forwarder's DNS resolver
 * when one is bound in the pod's namespace: returns 1 with t (redir_ip, redir_port, flags) set. */
static __always_inline int gw_to_resolver(struct bpf_sock_addr *ctx, struct gw_config *cfg,
					  struct orig_dst *t)
{
	if ((__u16)ctx->user_port != GW_DNS_PORT_N || !cfg->dns_port ||
	    !gw_local_socket(ctx, cfg->outbound_ip, cfg->dns_port, 1))
		return 0;
	t->flags = GW_DNS;
	t->redir_ip = cfg->outbound_ip;
	t->redir_port = cfg->dns_port;
	return 1;
}

/* The endpoint slot fail-open and socket LB pick from: uniform over the
 * service's endpoints. */
static __always_inline __u32 gw_slot(struct svc_value *svc)
{
	return svc->count ? bpf_get_prandom_u32() % svc->count : 0;
}

/* A TCP connect to a service goes to the forwarder's outbound listener if
 * the service needs the forwarder and one listens in the pod's namespace:
 * returns 1 with t set. Else (0) the endpoint is picked in the kernel. */
static __always_inline int gw_to_forwarder(struct bpf_sock_addr *ctx, struct gw_config *cfg,
					   struct svc_value *svc, struct orig_dst *t)
{
	/* Socket load balancing: a service that needs no forwarder feature gets
	 * its endpoint picked here, and its bytes never reach userspace. */
	if (svc->flags & GW_SVC_SOCKET_LB ||
	    !gw_local_socket(ctx, cfg->outbound_ip, cfg->outbound_port, 0))
		return 0;
	t->flags = GW_REDIRECTED;
	t->redir_ip = cfg->outbound_ip;
	t->redir_port = cfg->outbound_port;
	return 1;
}

/* Not to the forwarder: socket LB, or no forwarder and the pod fails open,
 * go to endpoint be, picked from slot gw_slot(svc): returns 1 with t set.
 * 0: the connect fails at once (EPERM), for a pod failing closed or a
 * service with no endpoint. */
static __always_inline int gw_to_endpoint(struct svc_value *svc, struct pod_settings *pod,
					  struct backend_value *be, struct orig_dst *t)
{
	if (!(svc->flags & GW_SVC_SOCKET_LB) && pod && pod->fail_mode == GW_FAIL_CLOSED)
		return 0;
	if (svc->count == 0 || !be)
		return 0;
	t->flags = GW_TRANSLATED;
	t->redir_ip = be->ip;
	t->redir_port = be->port;
	return 1;
}

/* Send the socket to t's redir_ip:redir_port instead, keeping what the app
 * asked for in st (the socket's storage) for getsockopt, getpeername and
 * recvmsg. */
static __always_inline void gw_redirect(struct bpf_sock_addr *ctx, int v6, struct orig_dst *st,
					struct orig_dst *t)
{
	st->ip = gw_dst_ip(ctx, v6);
	st->port = (__u16)ctx->user_port;
	st->flags = t->flags;
	st->redir_ip = t->redir_ip;
	st->redir_port = t->redir_port;
	gw_set_dst(ctx, v6, t->redir_ip, t->redir_port);
}

/* If the address the kernel reports is where we redirected to, report what
 * the app asked for instead (mapped, for an AF_INET6 socket). */
static __always_inline void gw_restore(struct bpf_sock_addr *ctx, int v6, struct orig_dst *rec)
{
	if (v6 && !gw_is_mapped(ctx))
		return;
	if (gw_dst_ip(ctx, v6) != rec->redir_ip || (__u16)ctx->user_port != rec->redir_port)
		return;
	gw_set_dst(ctx, v6, rec->ip, rec->port);
}

#endif
