/* cgroup/connect6 on pod cgroups: connect4 for AF_INET6 sockets dialling an
 * IPv4-mapped address (::ffff:VIP), as the JVM and gRPC C-core do. Same
 * decisions (sockaddr.h), same maps and records (IPv4), and the socket is
 * sent to the mapped forwarder listener (::ffff:127.0.0.1:15001, which the
 * AF_INET listener accepts), the mapped resolver or a mapped endpoint.
 *
 * Native IPv6 destinations pass untouched, port 53 included: the mesh has no
 * IPv6 services or resolver yet, and steering an IPv6 nameserver to
 * ::ffff:127.0.0.1 would fail for IPV6_V6ONLY sockets (ENETUNREACH) and
 * cannot be done for sendto() at all (sendmsg6.c). */
#include "maps.h"
#include "sockaddr.h"

int gw_connect6(struct bpf_sock_addr *ctx)
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

	if (!sk || !gw_is_mapped(ctx))
		return 1;
	cfg = gw_config.lookup(&zero);
	if (!cfg || cfg->outbound_port == 0 || gw_ours(sk, cfg))
		return 1;
	if (ctx->type != GW_SOCK_STREAM) {
		if (!gw_to_resolver(ctx, cfg, &t))
			return 1;
	} else {
		key.vip = gw_dst_ip(ctx, GW_AF_INET6);
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
	gw_redirect(ctx, GW_AF_INET6, st, &t);
	return 1;
}
