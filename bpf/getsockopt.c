/* cgroup/getsockopt on the forwarder's cgroup: the original destination of an
 * accepted socket answers the VIP:port the app dialled, from the record
 * sock_ops attached to that socket: SO_ORIGINAL_DST (SOL_IP) as a sockaddr_in
 * for an IPv4 (mapped) record, IP6T_SO_ORIGINAL_DST (SOL_IPV6, the same 80) as
 * a sockaddr_in6 for any record, as netfilter answers them. Everything else
 * passes through. */
#include "maps.h"
#include "sockaddr.h"

struct gw_sockaddr_in {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

struct gw_sockaddr_in6 {
	__u16 family;
	__u16 port;
	__u32 flowinfo;
	__u32 addr[4];
	__u32 scope_id;
};

int gw_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig_dst *rec;

	if (ctx->optname != GW_SO_ORIGINAL_DST || !sk ||
	    (ctx->level != GW_SOL_IP && ctx->level != GW_SOL_IPV6))
		return 1;
	rec = gw_orig.sk_storage_get(sk, 0, 0);
	if (!rec)
		return 1;
	if (ctx->level == GW_SOL_IP) {
		struct gw_sockaddr_in *sa = ctx->optval;

		if ((void *)(sa + 1) > ctx->optval_end || !gw_mapped(rec->ip))
			return 1;
		__builtin_memset(sa, 0, sizeof(*sa));
		sa->family = 2; /* AF_INET */
		sa->port = rec->port;
		sa->addr = rec->ip[3];
		ctx->optlen = sizeof(*sa);
	} else {
		struct gw_sockaddr_in6 *sa6 = ctx->optval;

		if ((void *)(sa6 + 1) > ctx->optval_end)
			return 1;
		__builtin_memset(sa6, 0, sizeof(*sa6));
		sa6->family = 10; /* AF_INET6 */
		sa6->port = rec->port;
		gw_copy_ip(sa6->addr, rec->ip);
		ctx->optlen = sizeof(*sa6);
	}
	/* clang may merge these two stores into one 8-byte store the verifier
	 * rejects (EACCES); keep them apart. */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	return 1;
}
