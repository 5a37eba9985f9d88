"""Active health checks of the endpoints a forwarder registers for its own
pods: TCP connect, or HTTP GET on a path, made from inside the pod the way
mesh traffic arrives. The threshold logic is a small state machine with no
I/O; the probes are coroutines given a connect function."""
import asyncio
import logging
from dataclasses import dataclass

log = logging.getLogger("glasswing.health")


@dataclass
class HealthState:
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    status: str = "unknown"
    ok_run: int = 0
    fail_run: int = 0

    def record(self, ok: bool) -> bool:
        """Count one probe result; True when the status changed."""
        if ok:
            self.ok_run, self.fail_run = self.ok_run + 1, 0
            if self.status != "healthy" and self.ok_run >= self.healthy_threshold:
                self.status = "healthy"
                return True
        else:
            self.fail_run, self.ok_run = self.fail_run + 1, 0
            if self.status != "unhealthy" and self.fail_run >= self.unhealthy_threshold:
                self.status = "unhealthy"
                return True
        return False


async def probe(connect, check: dict, host: str) -> bool:
    """One probe: connect() gives a connected non-blocking socket or raises."""
    timeout = check.get("timeout_ms", 1000) / 1000
    loop = asyncio.get_running_loop()
    try:
        sock = await asyncio.wait_for(connect(), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        if check.get("type", "tcp") != "http":
            return True
        req = f"GET {check.get('path', '/')} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: glasswing-health\r\n" \
              "Connection: close\r\n\r\n"
        await asyncio.wait_for(loop.sock_sendall(sock, req.encode()), timeout)
        head = await asyncio.wait_for(loop.sock_recv(sock, 64), timeout)
        parts = head.split(b" ", 2)
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] in (b"2", b"3")
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        sock.close()


class Checker:
    """Probes one endpoint every interval until cancelled; calls on_change(status)."""

    def __init__(self, connect, check: dict, host: str, on_change):
        self.connect, self.check, self.host, self.on_change = connect, check, host, on_change
        self.state = HealthState(check.get("healthy_threshold", 1), check.get("unhealthy_threshold", 3))
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        interval = self.check.get("interval_ms", 10000) / 1000
        while True:
            ok = await probe(self.connect, self.check, self.host)
            if self.state.record(ok):
                log.info("%s is %s", self.host, self.state.status)
                self.on_change(self.state.status)
            await asyncio.sleep(interval)

    def stop(self):
        self.task.cancel()
