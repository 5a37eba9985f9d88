"""Opening the upstream side of a stream: into a pod on this node, or through
the tunnel to a peer node's forwarder. Both ends are forwarder sockets
(marked, made outside any pod cgroup), so no hook ever redirects them. An IPv6
address is dialled over an AF_INET6 socket (IPV6_V6ONLY), from INBOUND_SOURCE6
into a pod."""
import asyncio
import socket

from dataplane.tunnel import codec as tc
from dataplane.settings import CONNECT_TIMEOUT, INBOUND_SOURCE, INBOUND_SOURCE6, PREAMBLE_TIMEOUT, TUNNEL_PORT
from dataplane.host.sockets import connect, marked_socket, ready


class StreamRejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


async def dial(addr, ns_fd: int = None, home_fd: int = None, source: str = None,
               timeout: float = None):
    """A connected forwarder socket to addr, made in namespace ns_fd (the
    node's own if None); closed again if the connect fails. timeout: seconds,
    CONNECT_TIMEOUT when None."""
    s = marked_socket(ns_fd, home_fd, family=socket.AF_INET6 if ":" in addr[0] else socket.AF_INET)
    try:
        await connect(s, addr, CONNECT_TIMEOUT if timeout is None else timeout, source=source)
    except BaseException:
        s.close()
        raise
    return s


async def connect_in_pod(ns_fd: int, home_fd: int, ip: str, port: int, timeout: float = None):
    """A connection to the app made from inside its pod, from 127.0.0.6 (::6 to an IPv6
    address, which the pod's lo has): the app sees a mesh connection, and no route or
    forwarding is needed."""
    source = INBOUND_SOURCE6 if ":" in ip else INBOUND_SOURCE
    return await dial((ip, port), ns_fd, home_fd, source=source, timeout=timeout)


async def read_preamble(sock, reader: tc.PreambleReader, timeout: float = PREAMBLE_TIMEOUT):
    """The preamble's event, read within timeout seconds (TimeoutError after). Reads at once
    what is already there (a StreamOpen usually arrives with the connection) and waits with
    one future per wait, no Task: it runs twice for every connection across nodes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            await ready(sock, False, deadline - loop.time(),
                        f"no complete preamble within {timeout:g}s")
            continue
        if not data:
            raise ConnectionError("peer closed during the preamble")
        event = reader.feed(data)
        if event is not None:
            return event


async def open_tunnel(node_ip: str, open_msg: tc.Open, timeout: float = None):
    """Connect to a peer forwarder (within timeout, CONNECT_TIMEOUT when None),
    send StreamOpen, await its Reply.
    Returns (socket, bytes the peer already sent for the app)."""
    loop = asyncio.get_running_loop()
    s = await dial((node_ip, TUNNEL_PORT), timeout=timeout)
    try:
        await loop.sock_sendall(s, tc.encode_open(open_msg))
        reader = tc.PreambleReader("reply")
        event = await read_preamble(s, reader)
        if isinstance(event, tc.Reject):
            raise StreamRejected(event.reason, event.detail)
        return s, reader.leftover
    except BaseException:
        s.close()
        raise
