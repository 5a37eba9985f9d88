/* sock_ops on pod cgroups and the forwarder's cgroup: hands the original
 * destination from the app's socket to the socket the forwarder accepts.
 * The two sockets have different cookies, so the active side publishes the
 * record under the connection's 4-tuple and netns, and the passive side
 * (which runs when the final ACK arrives, after the active side) takes it. */
#include "maps.h"

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

	if (skops->family != 2 /* AF_INET */)
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
