"""Idle keep-alive connections to upstream endpoints, for the HTTP/1.1 proxy (proxy.py).

One UpstreamPool per forwarder, shared by every HttpSession. A connection is keyed by the
endpoint it reaches (whatever hashable key the forwarder's Upstreams.pick returns), and carries
its own ResponseParser, since HTTP/1.1 framing state belongs to the connection.

    take(key)      an idle connection to that endpoint (the most recently used), or None
    put(conn)      a connection whose exchange finished cleanly goes back, or is closed when the
                   endpoint already has max_idle connections waiting
    discard(conn)  close it (errors, "Connection: close", anything not clean)

While a connection is idle nothing may arrive on it: the pool watches it with add_reader, and
any readiness (the upstream closed it, reset it, or sent bytes nobody asked for) closes it at
once, so most dead connections leave the pool before anyone takes them. The race that remains,
an upstream closing just as a request goes out, is the proxy's to handle: it retries such a
request once on a fresh connection when it may (see tries.py). Idle connections are closed
after idle_timeout seconds, and take() returns the newest, so a quiet endpoint keeps few.
"""
import asyncio
import socket

from dataplane.http.h1 import ResponseParser

MAX_IDLE_PER_KEY = 16
IDLE_TIMEOUT = 60.0  # seconds an unused upstream connection is kept


class PooledConn:
    """One upstream connection: its socket, its response parser, how often it was used."""

    __slots__ = ("key", "sock", "parser", "uses", "_timer")

    def __init__(self, key, sock: socket.socket, leftover: bytes = b"", parser_limits=None):
        self.key = key
        self.sock = sock
        self.parser = ResponseParser(**(parser_limits or {}))
        if leftover:  # bytes that came with a tunnel's StreamAccept
            self.parser.receive_data(leftover)
        self.uses = 0  # exchanges started on this connection; > 1 means it came from the pool
        self._timer = None

    @property
    def reused(self) -> bool:
        return self.uses > 1

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class UpstreamPool:
    def __init__(self, loop=None, max_idle_per_key: int = MAX_IDLE_PER_KEY,
                 idle_timeout: float = IDLE_TIMEOUT):
        self.loop = loop or asyncio.get_event_loop()
        self.max_idle_per_key = max_idle_per_key
        self.idle_timeout = idle_timeout
        self._idle = {}  # key -> [PooledConn], oldest first
        self.stats = {"reused": 0, "pooled": 0, "closed_idle": 0, "closed_by_peer": 0,
                      "over_limit": 0}

    def idle(self, key=None) -> int:
        """Idle connections for key, or in all."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def take(self, key):
        conns = self._idle.get(key)
        if not conns:
            return None
        conn = conns.pop()
        if not conns:
            del self._idle[key]
        self._unwatch(conn)
        conn.uses += 1
        self.stats["reused"] += 1
        return conn

    def put(self, conn: PooledConn) -> bool:
        """Keep conn for reuse; False when it was closed instead (over the limit, or not clean:
        the caller checks the parser is between messages with nothing buffered)."""
        if conn.sock.fileno() < 0 or conn.parser.buffered or self.max_idle_per_key <= 0:
            conn.close()
            return False
        conns = self._idle.setdefault(conn.key, [])
        while len(conns) >= self.max_idle_per_key:
            old = conns.pop(0)
            self._unwatch(old)
            old.close()
            self.stats["over_limit"] += 1
        conns.append(conn)
        self.loop.add_reader(conn.sock.fileno(), self._readable, conn)
        conn._timer = self.loop.call_later(self.idle_timeout, self._expire, conn)
        self.stats["pooled"] += 1
        return True

    def discard(self, conn: PooledConn) -> None:
        conn.close()

    def clear(self, key=None) -> None:
        """Close the idle connections of key (an endpoint that was found dead), or all."""
        keys = [key] if key is not None else list(self._idle)
        for k in keys:
            for conn in self._idle.pop(k, ()):
                self._unwatch(conn)
                conn.close()

    close = clear

    # -- idle watch

    def _remove(self, conn):
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._idle[conn.key]
        self._unwatch(conn)
        conn.close()

    def _readable(self, conn):
        self.stats["closed_by_peer"] += 1
        self._remove(conn)

    def _expire(self, conn):
        conn._timer = None
        self.stats["closed_idle"] += 1
        self._remove(conn)

    def _unwatch(self, conn):
        if conn._timer is not None:
            conn._timer.cancel()
            conn._timer = None
        fd = conn.sock.fileno()
        if fd >= 0:
            self.loop.remove_reader(fd)
