/* cgroup/getpeername4 on pod cgroups: an app whose connect was redirected
 * sees the service address it dialled as its peer, not the forwarder. */
#include "maps.h"
#include "sockaddr.h"

int gw_getpeername4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig_dst *rec;

	if (!sk)
		return 1;
	rec = gw_orig.sk_storage_get(sk, 0, 0);
	if (rec)
		gw_restore(ctx, GW_AF_INET, rec);
	return 1;
}
