"""The relay sink: where the forwarder hands a connected pair of sockets to be relayed raw.

RelaySink owns every open relay and what carries them: the relay engine's thread
(EngineRelays, made with its first relay in mode "engine" or "kernel") or one epoll in the
event loop (Poller, made with its first relay in the loop modes). The mode applies to new
connections only, so the admin "relay" command can switch it while connections are open.

A relay's info is (service, endpoint, trace, source pod). When a relay ends, the sink drops
it and calls on_gone(relay) once: outbound gives back the connection's policy hold there.
sweep() closes relays idle past their service's idle timeout and, as a backstop, lets
outbound release holds of connections that ended without telling it.
"""
import asyncio
import logging
import time

from dataplane.relay import modes as relay_modes
from dataplane.relay.engine_relays import EngineRelays
from dataplane.relay.idle_reaper import IdleReaper, interval as idle_interval
from dataplane.relay.poller import Poller
from dataplane.relay.relay import Relay

BACKSTOP_EVERY = 5.0  # seconds between sweeps for holds of ended connections
log = logging.getLogger("glasswing.forwarder")


class RelaySet(set):
    """The open relays. A relay's on_close is our discard, so discard reports which
    connection ended, once."""

    def __init__(self, on_discard):
        super().__init__()
        self._on_discard = on_discard

    def discard(self, r) -> None:
        if r in self:
            super().discard(r)
            self._on_discard(r)


class RelaySink:
    def __init__(self, mode: str, kernel=lambda: None, on_gone=lambda r: None):
        """mode: a relay_modes mode; kernel(): the kernel relay's fds (Programs.relay), or None,
        asked when the engine is made; on_gone(relay): called once per relay that ended."""
        self.mode = relay_modes.check(mode)
        self._kernel = kernel
        self.relays = RelaySet(on_gone)
        self.poller = None  # one epoll for every relayed socket, made with the first loop relay
        self.engine = None  # EngineRelays: the relay engine's thread, made with its first relay

    def relay(self, a, b, info: tuple, to_b: bytes = b"", to_a: bytes = b"") -> None:
        """Relay a and b (non-blocking) both ways; to_b and to_a are sent first."""
        mode = relay_modes.ENGINE_MODES.get(self.mode)
        if mode:
            if self.engine is None:
                self.engine = EngineRelays(asyncio.get_running_loop(), kernel=self._kernel())
            self.relays.add(self.engine.relay(a, b, to_b, to_a, self.relays.discard, info, mode))
            return
        if self.poller is None:
            self.poller = Poller(asyncio.get_running_loop())
        r = Relay(self.poller, a, b, to_b=to_b, to_a=to_a,
                  on_close=self.relays.discard, info=info, mode=self.mode)
        self.relays.add(r)
        r.start()

    def traces(self) -> set:
        """The trace ids of the open relays (the engine's sockets are detached: ask the relay)."""
        return {r.info[2] for r in self.relays if r.info}

    def close(self) -> None:
        """Reset every open relay and stop what carried them."""
        for r in list(self.relays):
            r.abort()
        if self.poller:
            self.poller.close()
        if self.engine:
            self.engine.close()

    def status(self) -> dict:
        from dataplane.relay.engine import IMPL as ENGINE
        from dataplane.relay.pump import IMPL
        from dataplane.relay.pipes import POOL
        return {"connections": len(self.relays), "relay": self.mode, "pump": IMPL, "engine": ENGINE,
                "kernel_relay": bool(self.engine and self.engine.kernel_on),
                "connections_in_kernel": self.engine.in_kernel() if self.engine else 0,
                "pipes": {"lent": POOL.lent, "idle": len(POOL.idle)}}


async def sweep(sink: RelaySink, policies, counters: dict, release_ended) -> None:
    """Now and then, until cancelled: close relays idle past their service's idle timeout
    (policies.settings(service).idle_timeout), and call release_ended(open traces) so that
    outbound releases the policy hold of connections that ended without telling it (a
    backstop for on_gone)."""
    reaper = IdleReaper(clock=time.monotonic)
    backstop = 0.0
    while True:
        timeouts = [s.idle_timeout for s in policies.explicit.values()]
        await asyncio.sleep(idle_interval(timeouts))
        try:
            relays = list(sink.relays) if any(timeouts) else ()
            for r in reaper.scan(relays, lambda s: policies.settings(s).idle_timeout):
                counters["idle_closed"] += 1
                log.info("service %s: closing a connection idle for %.1fs", r.info[0],
                         policies.settings(r.info[0]).idle_timeout)
                r.close()
            if time.monotonic() >= backstop:
                backstop = time.monotonic() + BACKSTOP_EVERY
                release_ended(sink.traces())
        except Exception as e:  # noqa: BLE001 - the sweep must go on
            log.error("sweep: %s", e)
