/* cgroup/getsockopt on the forwarder's cgroup: SO_ORIGINAL_DST on an
 * accepted socket answers the VIP:port the app dialled, from the record
 * sock_ops attached to that socket. Everything else passes through. */
#include "maps.h"

struct gw_sockaddr_in {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

int gw_getsockopt(struct bpf_sockopt *ctx)
{
	struct gw_sockaddr_in *sa = ctx->optval;
	struct orig_dst *rec;
	struct bpf_sock *sk = ctx->sk;

	if (ctx->level != 0 /* SOL_IP */ || ctx->optname != GW_SO_ORIGINAL_DST || !sk)
		return 1;
	rec = gw_orig.sk_storage_get(sk, 0, 0);
	if (!rec)
		return 1;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1;
	__builtin_memset(sa, 0, sizeof(*sa));
	sa->family = 2; /* AF_INET */
	sa->port = rec->port;
	sa->addr = rec->ip;
	ctx->optlen = sizeof(*sa);
	/* clang may merge these two stores into one 8-byte store the verifier
	 * rejects (EACCES); keep them apart. */
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	return 1;
}
