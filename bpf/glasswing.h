/* Glasswing: map structs and constants shared by every hook program.
 *
 * Each struct here is mirrored field by field in dataplane/kernel/structs.py;
 * tests/unit/test_bpf_structs.py compiles this header and fails when a size
 * or offset differs. Padding is explicit so both sides agree on layout.
 *
 * Addresses and ports the kernel hands us in network order (sock_addr
 * user_ip4/user_ip6/user_port) stay in network order in the maps; the tuple
 * key uses host-order ports because sock_ops gives local_port in host order.
 *
 * One address space for both families: every address is 16 bytes (__u32[4],
 * network order), an IPv4 one stored IPv4-mapped (::ffff:a.b.c.d, RFC 4291
 * 2.5.5.2), as the kernel's own dual-stack sockets see it. So an AF_INET
 * socket, an AF_INET6 socket dialling a mapped address and the forwarder's
 * AF_INET accepted socket all agree on keys; native IPv6 is just another
 * address.
 */
#ifndef GLASSWING_H
#define GLASSWING_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#ifndef PIN_DIR
#error "PIN_DIR must be set by the loader (-DPIN_DIR=\"/sys/fs/bpf/glasswing/NODE\")"
#endif

#define GW_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv4.h, not in uapi headers we can include */
#define GW_IP6T_SO_ORIGINAL_DST 80 /* linux/netfilter_ipv6/ip6_tables.h, at SOL_IPV6 */
#define GW_SOL_IP 0
#define GW_SOL_IPV6 41
#define GW_SOCK_STREAM 1     /* linux/net.h */

/* orig_dst.flags */
#define GW_REDIRECTED 1 /* sent to the forwarder's outbound listener */
#define GW_TRANSLATED 2 /* no forwarder: fail-open translation to an endpoint in the kernel */
#define GW_DNS 4        /* a DNS query sent to the forwarder's resolver */

#define GW_DNS_PORT_N 0x3500 /* 53 in network order (little-endian load) */

/* svc_value.flags */
#define GW_SVC_SOCKET_LB 1 /* connect4 picks the endpoint; the forwarder is not on the path */

/* pod_settings.fail_mode */
#define GW_FAIL_OPEN 0
#define GW_FAIL_CLOSED 1

/* VIP and port of a service (network order). An IPv4 VIP and an IPv6 VIP of
 * one service have entries of their own, with svc_ids of their own: each
 * one's backends hold addresses its sockets can reach. */
struct svc_key {
	__u32 vip[4];
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_value {
	__u32 svc_id;
	__u16 count; /* endpoints in gw_backends for fail-open, slots 0..count-1 */
	__u16 flags;
};

struct backend_key {
	__u32 svc_id;
	__u32 slot;
};

/* An endpoint address (network order): IPv4 (mapped) for an IPv4 VIP, IPv6
 * (or mapped, for an endpoint without one) for an IPv6 VIP. */
struct backend_value {
	__u32 ip[4];
	__u16 port;
	__u16 pad;
};

/* Per pod, keyed by the pod's cgroup id. */
struct pod_settings {
	__u8 fail_mode;
	__u8 pad[3];
	__u32 flags;
};

/* Node-wide settings, one entry at index 0. */
struct gw_config {
	__u64 fwd_cgroup_id; /* forwarder's own cgroup: never redirected */
	__u32 mark;          /* SO_MARK on forwarder sockets: never redirected */
	__u16 outbound_port; /* forwarder outbound listener, network order */
	__u16 dns_port;      /* forwarder DNS resolver (UDP, same address), network order */
	__u32 outbound_ip[4];  /* for IPv4 (and mapped) destinations: ::ffff:127.0.0.1 */
	__u32 outbound_ip6[4]; /* for native IPv6 ones: ::1, the IPV6_V6ONLY listeners */
};

/* What the app dialled, kept with the app's socket (and copied to the
 * forwarder's accepted socket). ip/port network order. */
struct orig_dst {
	__u32 ip[4];
	__u16 port;
	__u16 flags;
	__u32 redir_ip[4]; /* where connect4/6 or sendmsg4/6 sent it instead */
	__u16 redir_port;
	__u16 pad;
};

/* One TCP connection seen from its active (app) side. The socket cookie of
 * the app's socket is not the cookie of the socket the forwarder accepts, so
 * sock_ops hands the record over through this key. The netns cookie keeps
 * pods apart: every pod has the same 127.0.0.1. Ports in host order. */
struct tuple_key {
	__u64 netns;
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u16 local_port;
	__u16 remote_port;
	__u32 pad;
};

#endif
