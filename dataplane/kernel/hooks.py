"""The hook programs in bpf/: which file holds which program, its program and attach
types, and whether it goes on pods' cgroups, the forwarder's, or both. Read by the loader
(kernel/loader.py, which compiles them) and by kernel/programs.py (which attaches them).
A file may hold two programs (connect.c: connect4 and connect6 share one body); programs
are known by their function name.
"""
import os
from dataclasses import dataclass

from dataplane.settings import SOURCE_ROOT

BPF_DIR = os.path.join(SOURCE_ROOT, "bpf")


@dataclass(frozen=True)
class Hook:
    file: str          # bpf/<file>.c
    function: str      # program name (also what bpftool shows), unique
    prog_type: str     # bcc BPFProgType member
    attach_type: str   # bcc BPFAttachType member
    bpftool_type: str  # the attach type as `bpftool -j cgroup show` names it
    on_pods: bool
    on_forwarder: bool

    @property
    def name(self) -> str:
        """connect4, getsockopt, ...: the function without its gw_ prefix."""
        return self.function.removeprefix("gw_")


HOOKS = (
    Hook("connect", "gw_connect4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT", "cgroup_inet4_connect", True, False),
    Hook("connect", "gw_connect6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_CONNECT", "cgroup_inet6_connect", True, False),
    Hook("sockops", "gw_sockops", "SOCK_OPS", "CGROUP_SOCK_OPS", "cgroup_sock_ops", True, True),
    Hook("getpeername4", "gw_getpeername4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_GETPEERNAME",
         "cgroup_inet4_getpeername", True, False),
    Hook("getpeername6", "gw_getpeername6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_GETPEERNAME",
         "cgroup_inet6_getpeername", True, False),
    Hook("sendmsg", "gw_sendmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_SENDMSG", "cgroup_udp4_sendmsg",
         True, False),
    Hook("sendmsg", "gw_sendmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_SENDMSG", "cgroup_udp6_sendmsg",
         True, False),
    Hook("recvmsg4", "gw_recvmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_RECVMSG", "cgroup_udp4_recvmsg",
         True, False),
    Hook("recvmsg6", "gw_recvmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_RECVMSG", "cgroup_udp6_recvmsg",
         True, False),
    Hook("getsockopt", "gw_getsockopt", "CGROUP_SOCKOPT", "CGROUP_GETSOCKOPT", "cgroup_getsockopt", False, True),
)
OUR_NAMES = {h.function for h in HOOKS}
FILES = tuple(dict.fromkeys(h.file for h in HOOKS))  # each once, in order
