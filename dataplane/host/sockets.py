"""Socket helpers for the forwarder: marks, namespaces, resets, SO_ORIGINAL_DST."""
import asyncio
import errno
import ipaddress
import os
import socket
import struct

from dataplane.host import netns
from dataplane.settings import FORWARDER_MARK

SO_ORIGINAL_DST = 80       # SOL_IP, answers a sockaddr_in
IP6T_SO_ORIGINAL_DST = 80  # SOL_IPV6, answers a sockaddr_in6
IP_BIND_ADDRESS_NO_PORT = 24


def marked_socket(ns_fd: int = None, home_fd: int = None, kind: int = socket.SOCK_STREAM,
                  family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking socket (TCP unless kind says otherwise, AF_INET unless family
    says otherwise) with the forwarder mark, made in namespace ns_fd (the caller's own if
    None). An AF_INET6 one is IPV6_V6ONLY: IPv4 (and mapped) traffic is the AF_INET
    sockets' business."""
    flags = kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK  # non-blocking from birth: no fcntl
    if ns_fd is not None:
        with netns.entered(ns_fd, home_fd):
            s = socket.socket(family, flags)
    else:
        s = socket.socket(family, flags)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, FORWARDER_MARK)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except OSError:
        s.close()
        raise
    return s


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def listener(ip: str, port: int, ns_fd: int = None, home_fd: int = None, backlog: int = 4096):
    """A marked, non-blocking TCP listener on ip:port (IPv4 or IPv6) made in namespace ns_fd."""
    s = marked_socket(ns_fd, home_fd, family=_family(ip))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        s.listen(backlog)
    except OSError:
        s.close()
        raise
    return s


def udp_socket(ip: str, port: int, ns_fd: int = None, home_fd: int = None) -> socket.socket:
    """A bound, marked, non-blocking UDP socket on ip:port (IPv4 or IPv6) made in namespace ns_fd."""
    s = marked_socket(ns_fd, home_fd, socket.SOCK_DGRAM, _family(ip))
    try:
        s.bind((ip, port))
    except OSError:
        s.close()
        raise
    return s


async def connect(s: socket.socket, addr, timeout: float, source: str = None) -> None:
    """Connect the non-blocking socket s, or raise (TimeoutError after timeout seconds).

    On the per-connection path: one future and one timer, no Task (asyncio.wait_for over
    sock_connect costs a Task, and the handshake to a pod on this node is usually done
    before connect() returns anyway)."""
    if source:
        s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    err = s.connect_ex(addr)
    if err == 0:
        return
    if err != errno.EINPROGRESS:
        raise OSError(err, f"connect {addr[0]}:{addr[1]}: {os.strerror(err)}")
    if _established(s):  # a peer on this machine: the handshake ran inside connect(2)
        return
    await ready(s, True, timeout, f"connect {addr[0]}:{addr[1]}: no answer within {timeout:g}s")
    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"connect {addr[0]}:{addr[1]}: {os.strerror(err)}")


async def ready(s: socket.socket, write: bool, timeout: float, late: str) -> None:
    """Wait until s is writable (write) or readable, at most timeout seconds, then
    TimeoutError(late). One future and one timer, no Task: this is on the per-connection
    path (asyncio.wait_for costs a Task)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    fd = s.fileno()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: done.done() or done.set_result(None))
    timer = loop.call_later(max(timeout, 0), lambda: done.done() or done.set_exception(TimeoutError(late)))
    try:
        await done
    finally:
        timer.cancel()
        remove(fd)


def _established(s: socket.socket) -> bool:
    """Has the handshake finished? getpeername(2) answers ENOTCONN while SYN_SENT. One
    syscall instead of a wake-up, two epoll_ctl and a timer when the peer is local."""
    try:
        s.getpeername()
    except OSError:
        return False
    return True


def original_dst(s: socket.socket):
    """(ip, port) the app dialled, answered by the getsockopt hook (bpf/getsockopt.c); None if
    unknown. An accepted AF_INET socket asks SO_ORIGINAL_DST (a sockaddr_in), an AF_INET6 one
    IP6T_SO_ORIGINAL_DST (a sockaddr_in6). ip is text as the catalog keys VIPs: IPv4 for an
    IPv4 or IPv4-mapped address, else the compressed IPv6 text."""
    try:
        if s.family == socket.AF_INET6:
            raw = s.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        else:
            raw = s.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    # sockaddr_in(6): family in host order, port in network order
    family, port = struct.unpack_from("=H", raw)[0], struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntoa(raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        ip = ipaddress.IPv6Address(raw[8:24])
        return str(ip.ipv4_mapped or ip), port
    return None


def reset(s: socket.socket) -> None:
    """Close with RST, so the peer learns at once that the stream failed."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()
