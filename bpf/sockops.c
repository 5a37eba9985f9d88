/* sock_ops on pod cgroups and the forwarder's cgroup: hands the original
 * destination from the app's socket to the socket the forwarder accepts.
 * The two sockets have different cookies, so the active side publishes the
 * record under the connection's 4-tuple and netns, and the passive side
 * (which runs when the final ACK arrives, after the active side) takes it.
 * An app's AF_INET6 socket connected to an IPv4-mapped address (connect6) is
 * an IPv4 connection: its record goes under the same IPv4 tuple, which the
 * forwarder's accepted socket (AF_INET, its listener is) looks up. */
#include "maps.h"

/* An IPv4 connection: an AF_INET socket, or an AF_INET6 one whose peer is
 * ::ffff:a.b.c.d (then local_ip4 and remote_ip4 hold the IPv4 addresses).
 * Native IPv6 connections are not redirected yet. */
static __always_inline int ipv4_connection(struct bpf_sock_ops *skops)
{
	if (skops->family == 2 /* AF_INET */)
		return 1;
	return skops->family == 10 /* AF_INET6 */ && skops->remote_ip6[0] == 0 &&
	       skops->remote_ip6[1] == 0 && skops->remote_ip6[2] == bpf_htonl(0x0000ffff);
}

static __always_inline __u16 remote_port_host(struct bpf_sock_ops *skops)
{
	/* remote_port holds the network-order port in its upper 16 bits. */
	return bpf_ntohs((__u16)(skops->remote_port >> 16));
}

int gw_sockops(struct bpf_sock_ops *skops)
{
	struct tuple_key key = {};
	struct orig_dst *rec;
	struct bpf_sock *sk;

	if (!ipv4_connection(skops))
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	key.netns = bpf_get_netns_cookie(skops);

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		rec = gw_orig.sk_storage_get(sk, 0, 0);
		if (!rec || !(rec->flags & GW_REDIRECTED))
			return 1;
		key.local_ip = skops->local_ip4;
		key.remote_ip = skops->remote_ip4;
		key.local_port = (__u16)skops->local_port;
		key.remote_port = remote_port_host(skops);
		gw_tuples.update(&key, rec);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		struct orig_dst *st;

		/* Our local end is the app's remote end. */
		key.local_ip = skops->remote_ip4;
		key.remote_ip = skops->local_ip4;
		key.local_port = remote_port_host(skops);
		key.remote_port = (__u16)skops->local_port;
		rec = gw_tuples.lookup(&key);
		if (!rec)
			return 1;
		st = gw_orig.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (st)
			*st = *rec;
		gw_tuples.delete(&key);
		break;
	}
	}
	return 1;
}
