/* cgroup/sendmsg4 on pod cgroups: a datagram sent with sendto() to port 53
 * goes to the forwarder's DNS resolver in the pod's namespace instead; the
 * server the app asked is remembered with the socket so recvmsg4 can make
 * the answer come back from it. (Connected sockets are handled in connect4.) */
#include "maps.h"
#include "sockaddr.h"

int gw_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct gw_config *cfg;
	struct orig_dst *st;
	__u32 zero = 0;

	if (!sk || (__u16)ctx->user_port != GW_DNS_PORT_N)
		return 1;
	cfg = gw_config.lookup(&zero);
	if (!cfg || !cfg->dns_port || sk->mark == cfg->mark)
		return 1;
	if (!gw_local_socket(ctx, cfg->outbound_ip, cfg->dns_port, 1))
		return 1; /* no forwarder: the query goes where the app sent it */
	st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st)
		gw_redirect(ctx, st, cfg->outbound_ip, cfg->dns_port, GW_DNS);
	return 1;
}
