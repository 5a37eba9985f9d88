/* cgroup/connect4 on pod cgroups: a TCP connect to a service VIP:port goes to
 * the forwarder's outbound listener inside the pod's own namespace. With no
 * listener there (forwarder down), the pod's fail mode decides: open
 * translates to one of the service's endpoints here in the kernel, closed
 * fails the connect at once (EPERM). A service marked for socket load
 * balancing is always translated here, forwarder or not. A connected UDP socket
 * to port 53 (a resolver, as glibc does it) goes to the forwarder's DNS
 * resolver when one is bound. Anything else passes untouched.
 * connect6.c does the same for IPv4-mapped destinations of AF_INET6 sockets;
 * the decisions live in sockaddr.h. */
#include "maps.h"
#include "sockaddr.h"

int gw_connect4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct backend_key bk = {};
	struct svc_key key = {};
	struct pod_settings *pod;
	struct orig_dst t = {}; /* where it goes: redir_ip, redir_port, flags */
	struct gw_config *cfg;
	struct svc_value *svc;
	struct orig_dst *st;
	__u32 zero = 0;
	__u64 cg;

	if (!sk)
		return 1;
	/* bcc rewrites map calls only in the main file, hence no helper in maps.h */
	cfg = gw_config.lookup(&zero);
	if (!cfg || cfg->outbound_port == 0 || gw_ours(sk, cfg))
		return 1;
	if (ctx->type != GW_SOCK_STREAM) {
		if (!gw_to_resolver(ctx, cfg, &t))
			return 1;
	} else {
		key.vip = ctx->user_ip4;
		key.port = (__u16)ctx->user_port;
		key.proto = IPPROTO_TCP;
		svc = gw_services.lookup(&key);
		if (!svc)
			return 1;
		if (!gw_to_forwarder(ctx, cfg, svc, &t)) {
			cg = bpf_get_current_cgroup_id();
			pod = gw_pods.lookup(&cg);
			bk.svc_id = svc->svc_id;
			bk.slot = gw_slot(svc);
			if (!gw_to_endpoint(svc, pod, gw_backends.lookup(&bk), &t))
				return 0;
		}
	}
	st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1; /* cannot remember it: leave the connect alone */
	gw_redirect(ctx, GW_AF_INET, st, &t);
	return 1;
}
