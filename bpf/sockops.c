/* sock_ops on pod cgroups and the forwarder's cgroup: hands the original
 * destination from the app's socket to the socket the forwarder accepts.
 * The two sockets have different cookies, so the active side publishes the
 * record under the connection's 4-tuple and netns, and the passive side
 * (which runs when the final ACK arrives, after the active side) takes it.
 * Addresses in the tuple are 16 bytes, IPv4 ones mapped (glasswing.h): an
 * app's AF_INET6 socket connected to ::ffff:127.0.0.1 (connect6 on a mapped
 * VIP) and the forwarder's AF_INET accepted socket spell the connection the
 * same way, and a native IPv6 connection (to the [::1] listener) is keyed by
 * its IPv6 addresses on both sides. */
#include "maps.h"
#include "sockaddr.h"

/* The connection's local and remote addresses, 16 bytes each; 0 for a family
 * other than AF_INET and AF_INET6. An AF_INET6 socket with a mapped peer is
 * an IPv4 connection: local_ip4 and remote_ip4 hold its IPv4 addresses.
 * Every field is read once, before any branch: when clang lets two branches
 * share a load through ctx+offset, the verifier rejects it ("dereference of
 * modified ctx ptr"), and the barrier keeps the loads from sinking back. */
static __always_inline int gw_ends(struct bpf_sock_ops *skops, __u32 *local, __u32 *remote)
{
	__u32 family = skops->family, l4 = skops->local_ip4, r4 = skops->remote_ip4;

	local[0] = skops->local_ip6[0];
	local[1] = skops->local_ip6[1];
	local[2] = skops->local_ip6[2];
	local[3] = skops->local_ip6[3];
	remote[0] = skops->remote_ip6[0];
	remote[1] = skops->remote_ip6[1];
	remote[2] = skops->remote_ip6[2];
	remote[3] = skops->remote_ip6[3];
	asm volatile("" ::: "memory");
	if (family == 10 /* AF_INET6 */ && !gw_mapped(remote))
		return 1;
	if (family != 2 /* AF_INET */ && family != 10)
		return 0;
	gw_map4(local, l4);
	gw_map4(remote, r4);
	return 1;
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
	__u32 local[4], remote[4];

	if ((skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
	     skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) || !gw_ends(skops, local, remote))
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
		gw_copy_ip(key.local_ip, local);
		gw_copy_ip(key.remote_ip, remote);
		key.local_port = (__u16)skops->local_port;
		key.remote_port = remote_port_host(skops);
		gw_tuples.update(&key, rec);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		struct orig_dst *st;

		/* Our local end is the app's remote end. */
		gw_copy_ip(key.local_ip, remote);
		gw_copy_ip(key.remote_ip, local);
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
