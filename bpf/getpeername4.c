/* cgroup/getpeername4 on pod cgroups: an app whose connect was redirected
 * sees the service address it dialled as its peer, not the forwarder. */
#include "maps.h"

int gw_getpeername4(struct bpf_sock_addr *ctx)
{
	struct orig_dst *rec;
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 1;
	rec = gw_orig.sk_storage_get(sk, 0, 0);
	if (!rec)
		return 1;
	if (ctx->user_ip4 != rec->redir_ip || (__u16)ctx->user_port != rec->redir_port)
		return 1;
	ctx->user_ip4 = rec->ip;
	ctx->user_port = rec->port;
	return 1;
}
