"""Accept loops: every pending connection of a listening socket taken at once.

An Acceptor runs one loop per listener (a pod's outbound listener, the tunnel listener).
A readiness callback takes up to ACCEPT_BATCH connections per wake-up (no future and reader
round trip per accept), counts each as "accepted", makes it non-blocking and spawns
handler(conn) as a task. When accept fails for lack of resources (EMFILE, ENFILE, ENOBUFS)
the loop stops reading for ACCEPT_BACKOFF seconds instead of spinning, and says so in
errors["accept"].
"""
import asyncio
import logging

ACCEPT_BATCH = 64       # connections taken per readiness, then other callbacks get a turn
ACCEPT_BACKOFF = 0.1    # seconds without accepting after EMFILE and the like
log = logging.getLogger("glasswing.forwarder")


class Acceptor:
    def __init__(self, spawn, counters: dict, errors: dict):
        """spawn(coroutine): runs it as a task the caller owns (and cancels on stop)."""
        self._spawn, self._counters, self._errors = spawn, counters, errors

    async def loop(self, lsock, handler) -> None:
        """Accept on lsock until cancelled; handler(conn) is a coroutine function."""
        loop = asyncio.get_running_loop()
        fd = lsock.fileno()
        loop.add_reader(fd, self._ready, loop, lsock, handler)
        try:
            await loop.create_future()
        finally:
            loop.remove_reader(fd)

    def _ready(self, loop, lsock, handler):
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _peer = lsock.accept()
            except BlockingIOError:
                return
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS: back off instead of spinning
                self._errors["accept"] = f"{e.strerror} (backing off {ACCEPT_BACKOFF}s)"
                log.warning("accept on %s: %s", lsock.getsockname(), e)
                loop.remove_reader(lsock.fileno())
                loop.call_later(ACCEPT_BACKOFF, self._resume, loop, lsock, handler)
                return
            conn.setblocking(False)
            self._counters["accepted"] += 1
            self._spawn(handler(conn))

    def _resume(self, loop, lsock, handler):
        if lsock.fileno() >= 0:  # not closed meanwhile
            loop.add_reader(lsock.fileno(), self._ready, loop, lsock, handler)
