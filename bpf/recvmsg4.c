/* cgroup/recvmsg4 on pod cgroups: an answer from the forwarder's resolver
 * appears to come from the DNS server the app asked, which resolvers check. */
#include "maps.h"
#include "sockaddr.h"

int gw_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig_dst *rec;

	if (!sk)
		return 1;
	rec = gw_orig.sk_storage_get(sk, 0, 0);
	if (rec && (rec->flags & GW_DNS))
		gw_restore(ctx, GW_AF_INET, rec);
	return 1;
}
