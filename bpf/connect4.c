/* cgroup/connect4 on pod cgroups: a TCP connect to a service VIP:port goes to
 * the forwarder's outbound listener inside the pod's own namespace. With no
 * listener there (forwarder down), the pod's fail mode decides: open
 * translates to one of the service's endpoints here in the kernel, closed
 * fails the connect at once (EPERM). A service marked for socket load
 * balancing is always translated here, forwarder or not. A connected UDP socket
 * to port 53 (a resolver, as glibc does it) goes to the forwarder's DNS
 * resolver when one is bound. Anything else passes untouched. */
#include "maps.h"
#include "sockaddr.h"

int gw_connect4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct gw_config *cfg;
	struct svc_key key = {};
	struct svc_value *svc;
	struct orig_dst *st;
	__u32 zero = 0, ip;
	__u16 port, flags;

	if (!sk)
		return 1;
	/* bcc rewrites map calls only in the main file, hence no helper in maps.h */
	cfg = gw_config.lookup(&zero);
	if (!cfg || cfg->outbound_port == 0)
		return 1;
	if (sk->mark == cfg->mark || bpf_get_current_cgroup_id() == cfg->fwd_cgroup_id)
		return 1;
	if (ctx->type != GW_SOCK_STREAM) {
		if ((__u16)ctx->user_port != GW_DNS_PORT_N || !cfg->dns_port ||
		    !gw_local_socket(ctx, cfg->outbound_ip, cfg->dns_port, 1))
			return 1;
		st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (st)
			gw_redirect(ctx, st, cfg->outbound_ip, cfg->dns_port, GW_DNS);
		return 1;
	}

	key.vip = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;
	key.proto = IPPROTO_TCP;
	svc = gw_services.lookup(&key);
	if (!svc)
		return 1;

	/* Socket load balancing: a service that needs no forwarder feature gets
	 * its endpoint picked here, and its bytes never reach userspace. */
	if (!(svc->flags & GW_SVC_SOCKET_LB) &&
	    gw_local_socket(ctx, cfg->outbound_ip, cfg->outbound_port, 0)) {
		flags = GW_REDIRECTED;
		ip = cfg->outbound_ip;
		port = cfg->outbound_port;
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
		flags = GW_TRANSLATED;
		ip = be->ip;
		port = be->port;
	}

	st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1; /* cannot remember it: leave the connect alone */
	gw_redirect(ctx, st, ip, port, flags);
	return 1;
}
