"""Service ports learned as server-first, whose connections skip the sniff wait.

On a port with no declared protocol the forwarder sniffs each connection: it waits up to
http.sniff.SNIFF_DEADLINE for the client's first bytes. A server-first protocol (MySQL/MariaDB,
SMTP, FTP, SSH, a greeting echo server) has a client that sends nothing until the server
greets, so without learning every one of its connections would wait the whole deadline.
Envoy leaves this to configuration (a listener filter timeout, with the connection going on as
TCP when it fires) and Istio asks for such ports to be declared; declaring the port `tcp`
stays the best answer here too. Until then the forwarder learns, per (service, port):

Learning. A sniffed connection whose client sent nothing through the deadline, and whose
upstream then spoke first (its bytes arrived, within GREETING_WAIT of the connect, while the
client still had sent nothing), marks its service port server-first. A connection to a marked
port skips the sniff: it is relayed opaque at once. Only the connections that start before the
first verdict pay the wait.

Revisiting, so that a wrong mark does not stick:
  refuted  a connection that skipped the sniff is relayed once either side has sent bytes
           (at most GREETING_WAIT after its upstream connected; a server-first client waits
           for the greeting anyway, so this costs it nothing). When its client spoke first
           the mark is dropped. That connection stays opaque (its bytes flow; only L7
           features are lost), the next ones are sniffed again, so an HTTP client on a
           wrongly marked port gets the HTTP proxy back from its second connection.
  expiry   a mark lasts TTL. Once it has expired one connection, the probe, is sniffed again
           while the others keep skipping: the probe renews the mark (server-first again),
           drops it (its client spoke first), or, when it saw neither (the client hung up, the
           connect failed, nobody spoke), leaves the mark expired for the next connection to
           probe.
So a server-first port pays the sniff wait on its first connection, then on at most one
connection per TTL; a client-first port wrongly marked is sniffed again after one connection of
a client that speaks first, and after TTL in any case.

Bounds: CAPACITY marks at most; a new one past that forgets the one learned longest ago (that
port is sniffed again: a wait, never an error). The owner drops marks of service ports that
left the catalog or now declare a protocol (prune).
"""
import asyncio
import socket
import time
from collections import OrderedDict

from dataplane.http.sniff import SNIFF_DEADLINE

TTL = 300.0  # seconds a mark lasts before one connection probes it again
CAPACITY = 4096  # marks held at most (service ports)
GREETING_WAIT = SNIFF_DEADLINE  # how long a learning connection waits for the upstream's first bytes

SERVER, CLIENT = "server", "client"  # who spoke first, for seen()


class Mark:
    __slots__ = ("learned", "expires", "skipped", "probing")

    def __init__(self, now: float, ttl: float):
        self.learned, self.expires, self.skipped, self.probing = now, now + ttl, 0, False


class ServerFirstPorts:
    """The marks of one forwarder, keyed by (service key, port)."""

    def __init__(self, ttl: float = TTL, capacity: int = CAPACITY, clock=time.monotonic):
        self.ttl, self.capacity, self._clock = ttl, capacity, clock
        self._marks = OrderedDict()  # key -> Mark, the one learned longest ago first

    def __len__(self):
        return len(self._marks)

    def skip(self, key) -> bool:
        """Whether a new connection to key skips the sniff. False for a port not marked, and
        for the probe of an expired mark (this connection is sniffed; its verdict goes to
        seen()); True while the mark holds or another connection probes it."""
        mark = self._marks.get(key)
        if mark is None:
            return False
        if mark.probing or self._clock() < mark.expires:
            mark.skipped += 1
            return True
        mark.probing = True
        return False

    def seen(self, key, first) -> None:
        """The verdict of a sniffed connection to key: SERVER (client silent, upstream spoke
        first: mark or renew), CLIENT (the client spoke first: drop the mark) or None
        (neither seen: a mark stays expired, its probe slot free)."""
        if first == SERVER:
            mark = self._marks.pop(key, None)
            renewed = Mark(self._clock(), self.ttl)
            renewed.skipped = mark.skipped if mark else 0
            self._marks[key] = renewed
            while len(self._marks) > self.capacity:
                self._marks.popitem(last=False)
        elif first == CLIENT:
            self._marks.pop(key, None)
        else:
            mark = self._marks.get(key)
            if mark is not None:
                mark.probing = False

    def prune(self, keep) -> None:
        """Drop the marks whose key keep(key) rejects (a service port gone from the catalog)."""
        for key in [k for k in self._marks if not keep(k)]:
            del self._marks[key]

    def status(self) -> list:
        """The marks, for `glasswing status`: service, port, age_s, expires_in_s (negative:
        expired, the next connection probes), skipped (connections that skipped the sniff)."""
        now = self._clock()
        return [{"service": k[0], "port": k[1], "age_s": round(now - m.learned, 1),
                 "expires_in_s": round(m.expires - now, 1), "skipped": m.skipped, "probing": m.probing}
                for k, m in self._marks.items()]


def has_bytes(sock) -> bool:
    """Whether sock has bytes waiting (a zero-wait peek; nothing is read)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing yet; anything else: the relay meets it
        return False


async def first_speaker(conn, upstream, to_app: bytes, wait: float = GREETING_WAIT, loop=None):
    """SERVER, CLIENT or None: who of a freshly connected pair sent bytes first, waiting up to
    wait seconds for either (peeked, never read: the relay gets every byte). to_app: bytes the
    upstream sent already (with the tunnel's answer). A client that closed, or an upstream that
    closed or stayed silent, is None; when both have bytes the client's count (no mark)."""
    if has_bytes(conn):
        return CLIENT
    if to_app:
        return SERVER
    loop = loop or asyncio.get_running_loop()
    woken = loop.create_future()

    def wake():
        if not woken.done():
            woken.set_result(None)
    loop.add_reader(conn.fileno(), wake)
    loop.add_reader(upstream.fileno(), wake)
    try:
        await asyncio.wait_for(woken, wait)
    except asyncio.TimeoutError:
        return None
    finally:
        loop.remove_reader(conn.fileno())
        loop.remove_reader(upstream.fileno())
    if has_bytes(conn):
        return CLIENT
    return SERVER if has_bytes(upstream) else None
