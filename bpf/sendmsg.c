/* cgroup/sendmsg4 and cgroup/sendmsg6 on pod cgroups: a datagram sent with
 * sendto() to port 53 goes to the forwarder's DNS resolver in the pod's
 * namespace instead; the server the app asked is remembered with the socket
 * so recvmsg4/6 can make the answer come back from it. (Connected sockets are
 * handled in connect.c.)
 *
 * sendmsg4 runs for AF_INET sockets and also for an AF_INET6 socket's sendto()
 * to an IPv4-mapped address: udpv6_sendmsg hands those to udp_sendmsg as
 * AF_INET before its own hook, so sendmsg6 sees native IPv6 destinations only,
 * and steers them to the resolver's IPv6 socket on [::1]. recvmsg6 restores
 * the source either way. */
#include "maps.h"
#include "sockaddr.h"

static __always_inline int gw_sendmsg(struct bpf_sock_addr *ctx, int v6)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig_dst t = {}; /* where it goes: redir_ip, redir_port, flags */
	struct gw_config *cfg;
	struct orig_dst *st;
	__u32 dst[4];
	__u32 zero = 0;

	if (!sk || (__u16)ctx->user_port != GW_DNS_PORT_N)
		return 1;
	cfg = gw_config.lookup(&zero);
	if (!cfg || sk->mark == cfg->mark)
		return 1;
	gw_dst(ctx, v6, dst);
	if (!gw_to_resolver(ctx, cfg, dst, &t))
		return 1; /* no forwarder: the query goes where the app sent it */
	st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		gw_redirect(ctx, v6, dst, st, &t);
	return 1;
}

int gw_sendmsg4(struct bpf_sock_addr *ctx)
{
	return gw_sendmsg(ctx, GW_AF_INET);
}

int gw_sendmsg6(struct bpf_sock_addr *ctx)
{
	return gw_sendmsg(ctx, GW_AF_INET6);
}
