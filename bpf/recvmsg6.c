/* cgroup/recvmsg6 on pod cgroups: recvmsg4 for AF_INET6 sockets. An answer
 * from the forwarder's resolver appears to come from the DNS server the app
 * asked: a mapped one (steered to ::ffff:127.0.0.1 by connect6, or by sendmsg4
 * for a sendto(), which the kernel runs for mapped addresses) or a native
 * IPv6 one (steered to [::1] by connect6 or sendmsg6). */
#include "maps.h"
#include "sockaddr.h"

int gw_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig_dst *rec;

	if (!sk)
		return 1;
	rec = gw_orig.sk_storage_get(sk, 0, 0);
	if (rec && (rec->flags & GW_DNS))
		gw_restore(ctx, GW_AF_INET6, rec);
	return 1;
}
