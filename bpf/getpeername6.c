/* cgroup/getpeername6 on pod cgroups: getpeername4 for AF_INET6 sockets
 * connect6 redirected: the app sees the service address it dialled, mapped
 * (::ffff:VIP) or native IPv6, as its peer, not the forwarder. */
#include "maps.h"
#include "sockaddr.h"

int gw_getpeername6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig_dst *rec;

	if (!sk)
		return 1;
	rec = gw_orig.sk_storage_get(sk, 0, 0);
	if (rec)
		gw_restore(ctx, GW_AF_INET6, rec);
	return 1;
}
