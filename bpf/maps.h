/* The maps every hook uses, pinned under PIN_DIR so separate programs share
 * them and they outlive a forwarder restart. The guard keeps them defined
 * once when bpf_loader compiles the hook files as one unit. */
#ifndef GLASSWING_MAPS_H
#define GLASSWING_MAPS_H

#include "glasswing.h"

BPF_TABLE_PINNED("hash", struct svc_key, struct svc_value, gw_services, 65536, PIN_DIR "/services");
BPF_TABLE_PINNED("hash", struct backend_key, struct backend_value, gw_backends, 262144, PIN_DIR "/backends");
BPF_TABLE_PINNED("hash", __u64, struct pod_settings, gw_pods, 16384, PIN_DIR "/pods");
BPF_TABLE_PINNED("array", __u32, struct gw_config, gw_config, 1, PIN_DIR "/config");
/* Freed with the socket: no entry outlives its connection. */
BPF_TABLE_PINNED("sk_storage", int, struct orig_dst, gw_orig, 0, PIN_DIR "/orig", BPF_F_NO_PREALLOC);
/* Handover from app socket to accepted socket; lives for one handshake. LRU
 * so a handshake that never completes cannot fill it. */
BPF_TABLE_PINNED("lru_hash", struct tuple_key, struct orig_dst, gw_tuples, 65536, PIN_DIR "/tuples");

#endif
