"""Loopback TCP for the relay tests (pump, relay, engine, kernel relay).

Topology everywhere: A <-> B and C <-> D are TCP loopback connections; the code under test
joins B and C, the test writes into A and D and reads what comes out of the other end.
"""
import fcntl
import random
import socket
import struct
import termios
import threading

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
