/* cgroup/connect4 on pod cgroups: a TCP connect to a service VIP:port goes to
 * the forwarder's outbound listener inside the pod's own namespace. With no
 * listener there (forwarder down), the pod's fail mode decides: open
 * translates to one of the service's endpoints here in the kernel, closed
 * fails the connect at once (EPERM). A service marked for socket load
 * balancing is always translated here, forwarder or not. A connected UDP socket to port 53 (a
 * resolver, as glibc does it) goes to the forwarder's DNS resolver when one
 * is bound. Anything else passes untouched. */
#include "maps.h"
#include "dns.h"

static __always_inline int forwarder_listening(struct bpf_sock_addr *ctx, struct gw_config *cfg)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *l;

	t.ipv4.daddr = cfg->outbound_ip;
	t.ipv4.dport = cfg->outbound_port;
	/* Looks in the socket's own (pod) namespace; finds the listener since no
	 * established socket matches a zero source. */
	l = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!l)
		return 0;
	bpf_sk_release(l);
	return 1;
}

int gw_connect4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct gw_config *cfg;
	struct svc_key key = {};
	struct svc_value *svc;
	struct orig_dst rec = {};
	struct orig_dst *st;
	__u32 zero = 0;

	if (!sk)
		return 1;
	/* bcc rewrites map calls only in the main file, hence no helper in maps.h */
	cfg = gw_config.lookup(&zero);
	if (!cfg || cfg->outbound_port == 0)
		return 1;
	if (sk->mark == cfg->mark || bpf_get_current_cgroup_id() == cfg->fwd_cgroup_id)
		return 1;
	if (ctx->type != GW_SOCK_STREAM) {
		if ((__u16)ctx->user_port != GW_DNS_PORT_N || !cfg->dns_port || !resolver_bound(ctx, cfg))
			return 1;
		st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st)
			return 1;
		st->ip = ctx->user_ip4;
		st->port = (__u16)ctx->user_port;
		st->flags = GW_DNS;
		st->redir_ip = cfg->outbound_ip;
		st->redir_port = cfg->dns_port;
		ctx->user_ip4 = cfg->outbound_ip;
		ctx->user_port = cfg->dns_port;
		return 1;
	}

	key.vip = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;
	key.proto = IPPROTO_TCP;
	svc = gw_services.lookup(&key);
	if (!svc)
		return 1;

	rec.ip = key.vip;
	rec.port = key.port;
	/* Socket load balancing: a service that needs no forwarder feature gets
	 * its endpoint picked here, and its bytes never reach userspace. */
	if (!(svc->flags & GW_SVC_SOCKET_LB) && forwarder_listening(ctx, cfg)) {
		rec.flags = GW_REDIRECTED;
		rec.redir_ip = cfg->outbound_ip;
		rec.redir_port = cfg->outbound_port;
	} else {
		__u64 cg = bpf_get_current_cgroup_id();
		struct pod_settings *pod = gw_pods.lookup(&cg);
		struct backend_key bk = {};
		struct backend_value *be;

		if (!(svc->flags & GW_SVC_SOCKET_LB) && pod && pod->fail_mode == GW_FAIL_CLOSED)
			return 0;
		if (svc->count == 0)
			return 0;
		bk.svc_id = svc->svc_id;
		bk.slot = bpf_get_prandom_u32() % svc->count;
		be = gw_backends.lookup(&bk);
		if (!be)
			return 0;
		rec.flags = GW_TRANSLATED;
		rec.redir_ip = be->ip;
		rec.redir_port = be->port;
	}

	st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1; /* cannot remember it: leave the connect alone */
	*st = rec;
	ctx->user_ip4 = rec.redir_ip;
	ctx->user_port = rec.redir_port;
	return 1;
}
