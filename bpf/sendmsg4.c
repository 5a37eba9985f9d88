/* cgroup/sendmsg4 on pod cgroups: a datagram sent with sendto() to port 53
 * goes to the forwarder's DNS resolver in the pod's namespace instead; the
 * server the app asked is remembered with the socket so recvmsg4 can make
 * the answer come back from it. (Connected sockets are handled in connect4.)
 * The kernel runs this one, not sendmsg6, for an AF_INET6 socket's sendto()
 * to an IPv4-mapped address: udpv6_sendmsg hands those to udp_sendmsg as
 * AF_INET before its own hook. recvmsg6 then restores the mapped source. */
#include "maps.h"
#include "sockaddr.h"

int gw_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct orig_dst t = {}; /* where it goes: redir_ip, redir_port, flags */
	struct gw_config *cfg;
	struct orig_dst *st;
	__u32 zero = 0;

	if (!sk || (__u16)ctx->user_port != GW_DNS_PORT_N)
		return 1;
	cfg = gw_config.lookup(&zero);
	if (!cfg || sk->mark == cfg->mark)
		return 1;
	if (!gw_to_resolver(ctx, cfg, &t))
		return 1; /* no forwarder: the query goes where the app sent it */
	st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		gw_redirect(ctx, GW_AF_INET, st, &t);
	return 1;
}
