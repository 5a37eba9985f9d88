"""Loopback TCP for the unit tests.

Relay tests (pump, relay, engine, kernel relay): A <-> B and C <-> D are TCP loopback
connections; the code under test joins B and C, the test writes into A and D and reads what
comes out of the other end. Forwarder-role tests (inbound, outbound, the HTTP proxy): a
LoopbackListener served by the role, connected() in place of the forwarder's dialer, an echo
app, and addresses that refuse connections.
"""
import asyncio
import fcntl
import random
import socket
import struct
import termios
import threading

from dataplane.host.sockets import connect

from tests.support.wait import TIMEOUT


def tcp_pair(rcvbuf=None):
    """(client, server) connected over 127.0.0.1; rcvbuf sets the server side's SO_RCVBUF."""
    ls = socket.socket()
    try:
        if rcvbuf:  # set before accept() so the accepted socket inherits it (and its window)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    finally:
        ls.close()
    return a, b


def relay_pair():
    """(a, b, c, d): the relay gets b and c (non-blocking), the test keeps a and d."""
    a, b = tcp_pair()
    c, d = tcp_pair()
    for s in (b, c):
        s.setblocking(False)
    for s in (a, d):
        s.settimeout(TIMEOUT)
    return a, b, c, d


async def connected(addr, timeout: float = None) -> socket.socket:
    """A non-blocking TCP socket connected to addr with the forwarder's own connect (the
    stand-in for dialing an endpoint or a pod), IPv4 or IPv6 by addr; OSError, the socket
    closed, if that fails."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        await connect(s, addr, TIMEOUT if timeout is None else timeout)
    except BaseException:
        s.close()
        raise
    return s


def closed_port():
    """An address on 127.0.0.1 where nothing listens now (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = s.getsockname()
    s.close()
    return addr


def refusing_port():
    """(socket, port): a bound socket that does not listen, so a connect to the port is refused
    for as long as the socket stays open (close it when done)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


async def echo_server(host: str = "127.0.0.1"):
    """(asyncio server, port) on host (127.0.0.1 by default) that echoes each connection's bytes
    until its EOF."""
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()
    server = await asyncio.start_server(echo, host, 0)
    return server, server.sockets[0].getsockname()[1]


def readable_bytes(s) -> int:
    """Bytes waiting in s's receive queue (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def payload(seed, size):
    return random.Random(seed).randbytes(size)


def writer(sock, chunks, shut=True):
    for c in chunks:
        sock.sendall(c)
    if shut:
        sock.shutdown(socket.SHUT_WR)


def read_all(sock) -> bytes:
    out = bytearray()
    while True:
        b = sock.recv(1 << 16)
        if not b:
            return bytes(out)
        out += b


def chunks_of(data, seed):
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 7, 100, 1460, 4096, 65536, 300_000])
        out.append(data[i:i + n])
        i += n
    return out


def crossing(a, d, ab, dc):
    """Two threads, not started: one writes ab into a (random chunks, then half-close) and
    reads d to EOF, the other the same with dc from d to a. got["ab"] and got["dc"] hold what
    came out once they are joined."""
    got = {}

    def side(name, src, dst, data, seed):
        t = threading.Thread(target=writer, args=(src, chunks_of(data, seed)))
        t.start()
        got[name] = read_all(dst)
        t.join()

    return [threading.Thread(target=side, args=("ab", a, d, ab, 3)),
            threading.Thread(target=side, args=("dc", d, a, dc, 4))], got


class LoopbackListener:
    """A non-blocking listener on 127.0.0.1 (addr) and the tasks spawned to serve it, for tests
    that run a forwarder role (Acceptor -> Inbound or Outbound) on loopback. close() cancels the
    tasks still running and closes the listener."""

    def __init__(self):
        self.tasks = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.addr = self.listener.getsockname()

    def spawn(self, coro):
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def close(self):
        for t in list(self.tasks):
            t.cancel()
        self.listener.close()
