/* cgroup/connect4 and cgroup/connect6 on pod cgroups: a TCP connect to a
 * service VIP:port goes to the forwarder's outbound listener inside the pod's
 * own namespace. With no listener there (forwarder down), the pod's fail mode
 * decides: open translates to one of the service's endpoints here in the
 * kernel, closed fails the connect at once (EPERM). A service marked for
 * socket load balancing is always translated here, forwarder or not. A
 * connected UDP socket to port 53 (a resolver, as glibc does it) goes to the
 * forwarder's DNS resolver when one is bound. Anything else passes untouched.
 *
 * One body, two programs: connect4 for AF_INET sockets, connect6 for AF_INET6
 * ones, whether they dial an IPv4-mapped address (::ffff:VIP, as the JVM and
 * gRPC C-core do) or a native IPv6 VIP. Keys are 16-byte addresses
 * (glasswing.h), so a mapped destination finds the IPv4 VIP's entry and a
 * native one the IPv6 VIP's. A mapped destination goes to the forwarder's
 * AF_INET sockets (::ffff:127.0.0.1), a native one to its IPV6_V6ONLY ones on
 * [::1]; an endpoint is written back as the map holds it. The body is here,
 * not in sockaddr.h, because bcc rewrites map calls only in its main file. */
#include "maps.h"
#include "sockaddr.h"

static __always_inline int gw_connect(struct bpf_sock_addr *ctx, int v6)
{
	struct bpf_sock *sk = ctx->sk;
	struct backend_key bk = {};
	struct svc_key key = {};
	struct pod_settings *pod;
	struct orig_dst t = {}; /* where it goes: redir_ip, redir_port, flags */
	struct gw_config *cfg;
	struct svc_value *svc;
	struct orig_dst *st;
	__u32 dst[4];
	__u32 zero = 0;
	__u64 cg;

	if (!sk)
		return 1;
	cfg = gw_config.lookup(&zero);
	if (!cfg || cfg->outbound_port == 0 || gw_ours(sk, cfg))
		return 1;
	gw_dst(ctx, v6, dst);
	if (ctx->type != GW_SOCK_STREAM) {
		if (!gw_to_resolver(ctx, cfg, dst, &t))
			return 1;
	} else {
		gw_copy_ip(key.vip, dst);
		key.port = (__u16)ctx->user_port;
		key.proto = IPPROTO_TCP;
		svc = gw_services.lookup(&key);
		if (!svc)
			return 1;
		if (!gw_to_forwarder(ctx, cfg, dst, svc, &t)) {
			cg = bpf_get_current_cgroup_id();
			pod = gw_pods.lookup(&cg);
			bk.svc_id = svc->svc_id;
			bk.slot = gw_slot(svc);
			if (!gw_to_endpoint(v6, svc, pod, gw_backends.lookup(&bk), &t))
				return 0;
		}
	}
	st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1; /* cannot remember it: leave the connect alone */
	gw_redirect(ctx, v6, dst, st, &t);
	return 1;
}

int gw_connect4(struct bpf_sock_addr *ctx)
{
	return gw_connect(ctx, GW_AF_INET);
}

int gw_connect6(struct bpf_sock_addr *ctx)
{
	return gw_connect(ctx, GW_AF_INET6);
}
