"""Owner of the local hop acceleration (bpf/local_hop.c): sock_ops on
cgroups puts loopback connections to the forwarder's listener port into a
SOCKHASH; an sk_msg program on that SOCKHASH redirects each sendmsg into
the peer socket's receive side, as long as the sender has at most `budget`
redirected bytes its peer has not read; past that the socket falls back to
plain TCP for good (see the comment in local_hop.c). A receiver that
reports what it read (report_read) refills its peer's budget.

Off by default, and not wired into the forwarder: with the budget a stalled
reader is bounded, but (measured in tests/bpf/test_local_hop.py) a socket
that fell back is slower than plain TCP, a reader that does not report gets
the fast path only for its first `budget` bytes, and any socket in a SOCKHASH
reads differently (a blocking recv can return EAGAIN; splice sees nothing of
the redirected bytes). Loads with bcc in this process (LLVM
enters it: fine for tests and benchmarks; the forwarder would go through
bpf_loader instead). Every attachment is undone in reverse order by an
idempotent close(). Connections already accelerated keep their psock, with
the program and budget it holds, until they end; the programs and maps are
freed then. Removing their sockets from the SOCKHASH instead would drop the
redirected bytes still unread (sk_psock_destroy -> __sk_psock_zap_ingress).
"""
import ctypes
import os
import socket

from . import bpf_sys
from .bpf_programs import BPF_DIR, BPF_F_ALLOW_MULTI, import_bcc
from .bpf_structs import TupleKey
from .errors import GlasswingError

DEFAULT_BUDGET = 1 << 20  # redirected bytes a socket may have unread at its peer before it falls back to TCP
UNBOUNDED = 1 << 62       # for measuring the problem only: never falls back
SOURCE = os.path.join(BPF_DIR, "local_hop.c")
SO_NETNS_COOKIE = 71  # asm-generic/socket.h, Linux 5.14+; not in Python's socket module


class LocalHop:
    def __init__(self, port: int, budget: int = DEFAULT_BUDGET, pin_dir: str = "/sys/fs/bpf/glasswing/unused"):
        self.port, self.budget = port, budget
        self._pin_dir = pin_dir  # glasswing.h wants PIN_DIR; this object pins nothing
        self._bpf = None
        self._sockops = self._msg = None
        self.map_fd = self.read_map_fd = -1
        self._undo = []  # callables, in the order the attachments were made

    def load(self) -> "LocalHop":
        bcc = import_bcc()
        cflags = [f'-DPIN_DIR="{self._pin_dir}"', f"-I{BPF_DIR}",
                  f"-DGW_HOP_PORT={int(self.port)}", f"-DGW_HOP_BUDGET={int(self.budget)}ULL"]
        try:
            self._bpf = bcc.BPF(src_file=SOURCE.encode(), cflags=cflags)
            self._sockops = self._bpf.load_func(b"gw_hop_sockops", bcc.BPFProgType.SOCK_OPS)
            self._msg = self._bpf.load_func(b"gw_hop_msg", bcc.BPFProgType.SK_MSG)
        except Exception as e:  # noqa: BLE001 - bcc raises plain Exception with the verifier log
            self.close()
            raise GlasswingError(f"loading {SOURCE} failed: {' '.join(str(e).split())[-300:]}") from None
        self._attach_type = {n: int(getattr(bcc.BPFAttachType, n)) for n in ("CGROUP_SOCK_OPS", "SK_MSG_VERDICT")}
        # bcc has no table class for SOCKHASH (Unknown table type 18): take its fd.
        from bcc import libbcc
        self.map_fd = libbcc.lib.bpf_table_fd(self._bpf.module, b"gw_hop_socks")
        self.read_map_fd = libbcc.lib.bpf_table_fd(self._bpf.module, b"gw_hop_read")
        if self.map_fd < 0 or self.read_map_fd < 0:
            self.close()
            raise GlasswingError("gw_hop_socks or gw_hop_read not found after loading local_hop.c")
        atype = self._attach_type["SK_MSG_VERDICT"]
        try:
            bpf_sys.prog_attach(self._msg.fd, self.map_fd, atype, 0)
        except OSError as e:
            self.close()
            raise GlasswingError(f"attaching gw_hop_msg to its SOCKHASH failed: {e.strerror}") from None
        self._undo.append(lambda: bpf_sys.prog_detach(self._msg.fd, self.map_fd, atype))
        return self

    def attach(self, cgroup: str) -> None:
        """Run sock_ops on a cgroup: the app's and the forwarder's both need it,
        so that both ends of the hop enter the SOCKHASH."""
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        atype = self._attach_type["CGROUP_SOCK_OPS"]
        try:
            bpf_sys.prog_attach(self._sockops.fd, fd, atype, BPF_F_ALLOW_MULTI)
        except OSError as e:
            os.close(fd)
            raise GlasswingError(f"attaching local hop sock_ops to {cgroup} failed: {e.strerror}") from None

        def undo():
            try:
                bpf_sys.prog_detach(self._sockops.fd, fd, atype)
            finally:
                os.close(fd)
        self._undo.append(undo)

    def close(self) -> None:
        while self._undo:
            try:
                self._undo.pop()()
            except OSError:  # cgroup already removed: nothing left attached there
                pass
        if self._bpf is not None:
            self._bpf.cleanup()  # closes program and map fds
            self._bpf = None
        self._sockops = self._msg = None
        self.map_fd = self.read_map_fd = -1

    def __enter__(self):
        return self.load()

    def __exit__(self, *exc):
        self.close()


def read_key(sock: socket.socket) -> TupleKey:
    """The gw_hop_read key of a connected IPv4 TCP socket: its own view."""
    lip, lport = sock.getsockname()[:2]
    rip, rport = sock.getpeername()[:2]
    cookie = int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    return TupleKey(netns=cookie, local_ip=int.from_bytes(socket.inet_aton(lip), "little"),
                    remote_ip=int.from_bytes(socket.inet_aton(rip), "little"),
                    local_port=lport, remote_port=rport)


def report_read(read_map_fd: int, key: TupleKey, total: int) -> None:
    """Tell the peer's sk_msg program that this socket's owner has read `total`
    bytes so far: the peer may then have up to budget more unread redirected
    bytes. A receiver calls this every budget/4 bytes or so (one bpf(2) call);
    reporting late only makes the peer fall back to TCP sooner. Delete the key
    (bpf_sys.map_delete) when the socket closes; sock_ops also drops it when
    the same tuple is established again."""
    bpf_sys.map_update(read_map_fd, key, ctypes.c_uint64(total))
