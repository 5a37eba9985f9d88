"""Circuit breaking per service: a cap on upstream connections and on
connects in progress, so that a slow or dead service cannot make the
forwarder pile up sockets, memory and file descriptors for it.

Counted, as Envoy's tcp_proxy counts them:
  pending  connects started and not yet finished (the "requests waiting for
           a connection" of L4: each downstream connection waits until its
           upstream connect succeeds or fails)
  active   upstream connections open, connecting ones included; so a
           connect in progress holds a slot of both limits
A new connect is refused with the name of the limit it would break:
  "max_connections"  active has reached TrafficPolicySpec.max_connections
  "max_pending"      pending has reached TrafficPolicySpec.max_pending
A limit of 0 means no limit, which is what an omitted proto field reads as.

Life of one connection, every path ending in exactly one release:
  reason = cb.try_acquire()     # None: admitted, now pending
  ... connect ...
  cb.connected()                # pending -> open           (success)
  cb.release(connected=True)    # when the open connection closes
  cb.release(connected=False)   # instead, when the connect failed
"""
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class CircuitBreaker:
    max_connections: int = 0
    max_pending: int = 0
    active: int = 0
    pending: int = 0
    tripped: dict = field(default_factory=lambda: {"max_connections": 0, "max_pending": 0})

    def try_acquire(self) -> Optional[str]:
        """Admit one new connect (None) or name the limit it would break."""
        if self.max_connections and self.active >= self.max_connections:
            reason = "max_connections"
        elif self.max_pending and self.pending >= self.max_pending:
            reason = "max_pending"
        else:
            self.active += 1
            self.pending += 1
            return None
        self.tripped[reason] += 1
        return reason

    def connected(self) -> None:
        """The admitted connect succeeded: it stops being pending."""
        if self.pending <= 0:
            raise ValueError("connected() without a pending connect")
        self.pending -= 1

    def release(self, *, connected: bool) -> None:
        """The connection ended: closed after connected(), or its connect
        failed (connected=False). Underflow is a caller bug and raises, since
        a negative count would silently lift the limit."""
        if not connected:
            if self.pending <= 0:
                raise ValueError("release(connected=False) without a pending connect")
            self.pending -= 1
        if self.active <= 0:
            raise ValueError("release() without an admitted connection")
        self.active -= 1
