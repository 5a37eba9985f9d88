"""Relays carried by the relay engine (dataplane/relay/engine.py): the forwarder's side of it.

The forwarder's event loop accepts, picks an endpoint and connects; then EngineRelays hands
the two sockets to the engine's thread, which moves the bytes both ways without Python and
without the GIL (on the other core when there is one). What the forwarder keeps per
connection is an EngineRelay with the interface of dataplane/relay/relay.py's Relay that the
forwarder uses: bytes, info, close(), abort(), and on_close called once the connection ended.
The engine reports ends through an fd this class reads in the loop.
"""
import os

from dataplane.kernel import relay_gate as kernel_relay
from dataplane.kernel import syscalls as bpf_sys
from dataplane.relay.engine import Engine


class EngineRelay:
    __slots__ = ("owner", "id", "a", "info", "on_close", "closed", "error", "ended_bytes")

    def __init__(self, owner, cid: int, a, info: tuple, on_close):
        self.owner, self.id, self.a = owner, cid, a  # a: the app's socket object (detached)
        self.info = info
        self.on_close = on_close
        self.closed = False
        self.error = None
        self.ended_bytes = (0, 0)

    @property
    def bytes(self):
        if not self.closed:
            b = self.owner.engine.bytes(self.id)
            if b is not None:
                return b
        return self.ended_bytes

    def close(self) -> None:
        """Close both sides cleanly (FIN); on_close follows when the engine has done it."""
        if not self.closed:
            self.owner.engine.close_conn(self.id)

    def abort(self, error=None) -> None:
        """Reset both sides; on_close follows when the engine has done it."""
        if not self.closed:
            self.error = error
            self.owner.engine.abort(self.id)


class EngineRelays:
    def __init__(self, loop, max_conns: int = 1 << 20, kernel: dict | None = None):
        """kernel: the kernel relay's fds (bpf_programs.Programs.relay), for mode "kernel"."""
        self.loop = loop
        self.engine = Engine(max_conns)
        self.open = {}  # id -> EngineRelay
        self.kernel_on = False  # whether mode "kernel" can carry bytes in the kernel
        try:
            if kernel and kernel_relay.supported():
                ring_bytes = bpf_sys.map_max_entries(kernel["gw_kr_events"])
                self.kernel_on = self.engine.kernel(kernel["gw_kr_socks"], kernel["gw_kr_state"],
                                                    kernel["gw_kr_events"], ring_bytes)
        except BaseException:
            self.engine.close()
            raise
        loop.add_reader(self.engine.fileno(), self._collect)

    def relay(self, a, b, to_b: bytes, to_a: bytes, on_close, info: tuple, mode: str = "auto"):
        """Hand sockets a and b (non-blocking) to the engine: their fds are its from here
        on, even when this raises (both are then reset)."""
        cid = self.engine.add(a.detach(), b.detach(), to_b, to_a, mode)
        r = self.open[cid] = EngineRelay(self, cid, a, info, on_close)
        return r

    def __len__(self) -> int:
        return len(self.open)

    def in_kernel(self) -> int:
        """Open connections whose bytes the kernel carries."""
        return self.engine.in_kernel()

    def _collect(self) -> None:
        for cid, code, ab, ba in self.engine.done():
            r = self.open.pop(cid, None)
            if r is None:
                continue
            r.closed = True
            r.ended_bytes = (ab, ba)
            if code and r.error is None:
                r.error = OSError(code, os.strerror(code))
            if r.on_close:
                r.on_close(r)

    def close(self) -> None:
        """Reset what is still open, report it, and stop the engine's thread."""
        self.loop.remove_reader(self.engine.fileno())
        self.engine.stop()
        self._collect()
        self.engine.close()
