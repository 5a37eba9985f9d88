"""ctypes mirrors of the map structs in bpf/glasswing.h (the hooks) and
bpf/kernel_relay.h (the kernel relay), field for field.

tests/unit/test_bpf_structs.py compiles each header and compares every size
and offset with these, the way Cilium's alignchecker guards its Go mirrors.
Fields the kernel keeps in network order are marked (n). Addresses are 16 bytes (IP16),
IPv4 ones mapped (::ffff:a.b.c.d); kernel/addrs.py converts them from and to text.
"""
import ctypes as C

IP16 = C.c_uint32 * 4  # __u32 [4], network order

GW_REDIRECTED = 1
GW_TRANSLATED = 2
GW_DNS = 4
GW_SVC_SOCKET_LB = 1
GW_FAIL_OPEN = 0
GW_FAIL_CLOSED = 1


class SvcKey(C.Structure):
    _fields_ = [("vip", IP16),  # (n)
                ("port", C.c_uint16),  # (n)
                ("proto", C.c_uint8),
                ("pad", C.c_uint8)]


class SvcValue(C.Structure):
    _fields_ = [("svc_id", C.c_uint32),
                ("count", C.c_uint16),
                ("flags", C.c_uint16)]


class BackendKey(C.Structure):
    _fields_ = [("svc_id", C.c_uint32),
                ("slot", C.c_uint32)]


class BackendValue(C.Structure):
    _fields_ = [("ip", IP16),  # (n)
                ("port", C.c_uint16),  # (n)
                ("pad", C.c_uint16)]


class PodSettings(C.Structure):
    _fields_ = [("fail_mode", C.c_uint8),
                ("pad", C.c_uint8 * 3),
                ("flags", C.c_uint32)]


class GwConfig(C.Structure):
    _fields_ = [("fwd_cgroup_id", C.c_uint64),
                ("mark", C.c_uint32),
                ("outbound_port", C.c_uint16),  # (n)
                ("dns_port", C.c_uint16),  # (n)
                ("outbound_ip", IP16),  # (n) mapped 127.0.0.1
                ("outbound_ip6", IP16)]  # (n) ::1


class OrigDst(C.Structure):
    _fields_ = [("ip", IP16),  # (n)
                ("port", C.c_uint16),  # (n)
                ("flags", C.c_uint16),
                ("redir_ip", IP16),  # (n)
                ("redir_port", C.c_uint16),  # (n)
                ("pad", C.c_uint16)]


class TupleKey(C.Structure):
    _fields_ = [("netns", C.c_uint64),
                ("local_ip", IP16),  # (n)
                ("remote_ip", IP16),  # (n)
                ("local_port", C.c_uint16),
                ("remote_port", C.c_uint16),
                ("pad", C.c_uint32)]


class KrState(C.Structure):
    """gw_kr_state: the verdict's counters for one socket of a connection in the kernel."""
    _fields_ = [("peer", C.c_uint64),
                ("redirected", C.c_uint64),
                ("passed", C.c_uint64),
                ("slot", C.c_uint32),
                ("gen", C.c_uint32),
                ("side", C.c_uint32),
                ("user", C.c_uint32),
                ("repeated", C.c_uint64),
                ("seq_next", C.c_uint32),
                ("seq_known", C.c_uint32)]


class KrEvent(C.Structure):
    """A record on gw_kr_events (read by the C engine only; mirrored for the layout test)."""
    _fields_ = [("slot", C.c_uint32),
                ("gen", C.c_uint32),
                ("side", C.c_uint32),
                ("pad", C.c_uint32)]


# header in bpf/ -> {C struct name -> mirror}, for the layout test.
MIRRORS = {
    "glasswing.h": {
        "svc_key": SvcKey, "svc_value": SvcValue, "backend_key": BackendKey,
        "backend_value": BackendValue, "pod_settings": PodSettings, "gw_config": GwConfig,
        "orig_dst": OrigDst, "tuple_key": TupleKey,
    },
    "kernel_relay.h": {"gw_kr_state": KrState, "gw_kr_event": KrEvent},
}
