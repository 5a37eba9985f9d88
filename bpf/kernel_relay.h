/* Kernel relay: what bpf/kernel_relay.c (the verdict program) and ext/relay/kernel_mode.c
 * (the relay engine's mode "kernel") share, defined once and included by both.
 *
 * The structs are the value of gw_kr_state and the record on gw_kr_events. Each is mirrored
 * field by field in dataplane/kernel/structs.py (the bpf tests read gw_kr_state);
 * tests/unit/test_bpf_structs.py compiles this header and fails when a size or offset
 * differs. Only fixed-size types, padding explicit: the BPF target and the engine's compiler
 * lay them out the same way.
 *
 * The ring's size in bytes is GW_KR_RING_PAGES pages (bcc's BPF_RINGBUF_OUTPUT counts
 * pages); the owner reads it from the loaded map (max_entries) and hands it to the engine.
 */
#ifndef GW_KERNEL_RELAY_H
#define GW_KERNEL_RELAY_H

#include <linux/types.h>

#define GW_KR_BULK 16384     /* an skb this large turns its direction over to user space */
#define GW_KR_MAX 65536      /* entries of gw_kr_socks and gw_kr_state: sockets, two a conn */
#define GW_KR_RING_PAGES 16  /* gw_kr_events */
#define GW_KR_TRIM_STEP 4095 /* most bytes bpf_skb_adjust_room takes off an sk_skb at once */
#define GW_KR_TRIM_STEPS 64  /* so the verdict cuts up to 64 * 4095 repeated bytes off an skb */

/* gw_kr_state, keyed by socket cookie: one entry per socket of a connection in the kernel. */
struct gw_kr_state {
	__u64 peer;       /* socket cookie of the other socket */
	__u64 redirected; /* bytes this socket received and the program sent to the other */
	__u64 passed;     /* bytes this socket received and the program left to user space */
	__u32 slot;       /* the engine's connection id */
	__u32 gen;        /* and its generation: a stale event never reaches a reused slot */
	__u32 side;       /* the direction this socket is the source of (0: a -> b) */
	__u32 user;       /* 1 once the direction carries bulk in user space */
	__u64 repeated;   /* bytes TCP handed the verdict a second time, cut off (kernel_relay.c) */
	__u32 seq_next;   /* TCP sequence number of the next byte the verdict has not seen */
	__u32 seq_known;  /* 1 once seq_next is (the verdict read an skb's sequence numbers) */
};

/* On gw_kr_events: the verdict turned direction `side` of connection slot/gen over. */
struct gw_kr_event {
	__u32 slot;
	__u32 gen;
	__u32 side;
	__u32 pad;
};

#endif
