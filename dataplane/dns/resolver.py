"""The mesh DNS resolver: an asyncio UDP server on 127.0.0.1:15053 in each pod's namespace.

eBPF steers a pod's UDP port 53 traffic to that socket; the forwarder creates and binds it
inside the pod's namespace and hands it to Resolver.serve(sock, pod), so every datagram is
known to come from that pod. One Resolver serves every pod of the node.

The name rules live in the forwarder's lookup callback (see dataplane.dns.names.classify):
lookup(pod, name) -> (kind, ips) with kind
- "found":    ips are the service's VIPs, IPv4 and IPv6 (text); the mesh answers A with the IPv4
              ones, AAAA with the IPv6 ones and ANY with all; a type without an address of
              its family (AAAA for an IPv4-only service, A for an IPv6-only one) and other
              types get NODATA
- "nxdomain": a mesh name that does not exist
- "nodata":   a mesh name that exists without addresses
- "outside":  not a mesh name: the raw query goes to the upstream resolver, if any
              (else REFUSED at once); no answer within upstream_timeout gives SERVFAIL.
Mesh answers are authoritative (AA). Packets that do not parse get FORMERR when their id
could be read; shorter than a header, or responses (QR set), are dropped. Opcodes other
than QUERY get NOTIMP, classes other than IN get REFUSED, EDNS versions other than 0 get
BADVERS. A lookup that raises gives SERVFAIL. Nothing raises out of datagram_received.

Forwarding: each forwarded query gets a fresh socket from socket_factory() (called with no
argument; the forwarder makes it in the node namespace with its SO_MARK), connected to the
upstream so that an ICMP unreachable ends the wait early, and a fresh random id; only a
response from the upstream with that id and the same question is relayed, with the
client's id put back. At most max_inflight queries are forwarded at once; beyond that,
SERVFAIL.

counters (a dict, for status): queries (datagrams received), answered (A, AAAA and ANY answers
from the mesh), nodata, nxdomain, refused, formerr, forwarded (sent upstream), servfail, notimp,
badvers, dropped (packets not answered: too short, responses, or a closed socket).
"""

import asyncio
import logging
import secrets
import socket
import struct

from dataplane.dns import codec

log = logging.getLogger("glasswing.dns")

COUNTERS = ("queries", "answered", "nodata", "nxdomain", "refused", "formerr", "forwarded", "servfail",
            "notimp", "badvers", "dropped")
KINDS = ("found", "nxdomain", "nodata", "outside")
MESH_TYPES = (codec.TYPE_A, codec.TYPE_AAAA, codec.TYPE_ANY)


def _of_type(ips, qtype) -> list:
    """The addresses that answer qtype: IPv4 for A, IPv6 for AAAA, all for ANY."""
    if qtype == codec.TYPE_ANY:
        return list(ips)
    six = qtype == codec.TYPE_AAAA
    return [ip for ip in ips if (":" in ip) == six]


def _default_socket_factory(upstream):
    family = socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET
    return lambda: socket.socket(family, socket.SOCK_DGRAM)


class _ServerProtocol(asyncio.DatagramProtocol):
    """One pod's resolver socket."""

    def __init__(self, resolver, pod):
        self.resolver, self.pod = resolver, pod
        self.transport = None
        self.tasks = set()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        try:
            self.resolver._handle(self, data, addr)
        except Exception:  # never let one packet take the socket down
            log.exception("dns: pod %s: unexpected error on a query from %s", self.pod, addr)

    def error_received(self, exc):  # e.g. ICMP unreachable from a client that went away
        log.debug("dns: pod %s: %s", self.pod, exc)

    def connection_lost(self, exc):
        for task in list(self.tasks):
            task.cancel()

    def send(self, data, addr):
        if self.transport is None or self.transport.is_closing():
            self.resolver.counters["dropped"] += 1
            return
        self.transport.sendto(data, addr)


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, done, qid, raw_question):
        self.done, self.qid, self.raw_question = done, qid, raw_question

    def datagram_received(self, data, addr):
        if not self.done.done() and codec.is_response_to(data, self.qid, self.raw_question):
            self.done.set_result(data)

    def error_received(self, exc):
        if not self.done.done():
            self.done.set_exception(exc)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("upstream socket closed"))


class Resolver:
    def __init__(self, lookup, upstream=None, upstream_timeout=2.0, socket_factory=None, *,
                 ttl=5, authority="svc.glasswing", negative_ttl=codec.NEGATIVE_TTL, max_inflight=256):
        """lookup(pod, name) -> (kind, ips); upstream (host, port) or None.

        ttl: TTL of mesh A and AAAA records. authority: the mesh zone; negative answers for names in
        it carry its SOA (negative TTL negative_ttl), None for none.
        """
        self.lookup = lookup
        self.upstream = tuple(upstream) if upstream else None
        self.upstream_timeout = upstream_timeout
        self.socket_factory = socket_factory or (_default_socket_factory(self.upstream) if self.upstream else None)
        self.ttl = ttl
        self.authority = authority.strip(".").lower() if authority else None
        self.negative_ttl = negative_ttl
        self.max_inflight = max_inflight
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.inflight = 0
        self._servers = []

    async def serve(self, sock, pod):
        """Answer queries arriving on sock (bound UDP) as coming from pod; return the transport."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        protocol = _ServerProtocol(self, pod)
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        self._servers.append(protocol)
        return transport

    def close(self):
        """Close every socket served and cancel forwarded queries still waiting."""
        for protocol in self._servers:
            if protocol.transport is not None:
                protocol.transport.close()
            for task in list(protocol.tasks):
                task.cancel()
        self._servers.clear()

    # --- one datagram -------------------------------------------------------------------

    def _handle(self, server, data, addr):
        c = self.counters
        c["queries"] += 1
        try:
            q = codec.parse_query(data)
        except codec.DnsFormatError as e:
            if e.id is None or e.is_response:
                c["dropped"] += 1
            else:
                c["formerr"] += 1
                server.send(codec.formerr(e.id), addr)
            return
        reply = self._answer(server, q, data, addr)
        if reply is not None:
            server.send(reply, addr)

    def _answer(self, server, q, data, addr):
        """The reply to q, or None when it was handed to the upstream."""
        c = self.counters
        if q.opcode != codec.OPCODE_QUERY:
            c["notimp"] += 1
            return codec.notimp(q)
        if q.has_edns and q.edns_version != 0:
            c["badvers"] += 1
            return codec.badvers(q)
        if q.qclass != codec.CLASS_IN:
            c["refused"] += 1
            return codec.refused(q)
        try:
            kind, ips = self.lookup(server.pod, q.name)
            if kind not in KINDS:
                raise ValueError(f"lookup returned kind {kind!r}")
        except Exception as e:
            log.error("dns: pod %s: lookup of %r failed: %s", server.pod, q.name, e)
            c["servfail"] += 1
            return codec.servfail(q)
        zone = self._zone_of(q.name)
        ips = _of_type(ips, q.qtype) if kind == "found" and q.qtype in MESH_TYPES else []
        if ips:
            c["answered"] += 1
            return codec.answer(q, ips, self.ttl)
        if kind in ("found", "nodata"):
            c["nodata"] += 1
            return codec.nodata(q, zone, negative_ttl=self.negative_ttl)
        if kind == "nxdomain":
            c["nxdomain"] += 1
            return codec.nxdomain(q, zone, negative_ttl=self.negative_ttl)
        # outside the mesh
        if self.upstream is None:
            c["refused"] += 1
            return codec.refused(q)
        if self.inflight >= self.max_inflight:
            c["servfail"] += 1
            return codec.servfail(q)
        task = asyncio.get_running_loop().create_task(self._forward(server, q, data, addr))
        server.tasks.add(task)
        task.add_done_callback(server.tasks.discard)
        return None

    def _zone_of(self, name):
        a = self.authority
        return a if a and (name == a or name.endswith("." + a)) else None

    async def _forward(self, server, q, data, addr):
        self.inflight += 1
        try:
            try:
                reply = await asyncio.wait_for(self._ask_upstream(q, data), self.upstream_timeout)
                reply = codec.with_id(reply, q.id)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("dns: upstream %s for %r: %r", self.upstream, q.name, e)
                self.counters["servfail"] += 1
                reply = codec.servfail(q)
            server.send(reply, addr)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("dns: forwarding %r", q.name)
        finally:
            self.inflight -= 1

    async def _ask_upstream(self, q, data):
        loop = asyncio.get_running_loop()
        qid = secrets.randbelow(0x10000)
        done = loop.create_future()
        sock = self.socket_factory()
        transport = None
        try:
            sock.setblocking(False)
            sock.connect(self.upstream)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UpstreamProtocol(done, qid, q.raw_question), sock=sock)
            self.counters["forwarded"] += 1
            transport.sendto(struct.pack("!H", qid) + data[2:])
            return await done
        finally:
            if transport is not None:
                transport.close()
            else:
                sock.close()
            if not done.done():
                done.cancel()
            elif not done.cancelled():
                done.exception()  # retrieved, so asyncio does not log it
