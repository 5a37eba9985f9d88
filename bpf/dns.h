/* Steering a pod's DNS (UDP port 53) to the forwarder's resolver in the
 * pod's own namespace, shared by connect4 (connected UDP sockets, as glibc
 * uses) and sendmsg4 (sendto). Include after maps.h. */
#ifndef GLASSWING_DNS_H
#define GLASSWING_DNS_H

static __always_inline int resolver_bound(void *ctx, struct gw_config *cfg)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *s;

	t.ipv4.daddr = cfg->outbound_ip;
	t.ipv4.dport = cfg->dns_port;
	s = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!s)
		return 0;
	bpf_sk_release(s);
	return 1;
}

#endif
