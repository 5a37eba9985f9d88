"""Inbound: a tunnel stream on 15008 from a peer forwarder, into an app of a pod on this node.

One stream, in order: read the StreamOpen preamble (within settings.PREAMBLE_TIMEOUT), check
that its service port exists and that its target (either address of the endpoint, IPv4 or IPv6)
is an endpoint of it on this node, connect to the target address from inside the pod (the dialer's connect_local, within the service's connect
timeout), answer StreamAccept and hand both sockets to the relay sink with any app bytes
that came with the preamble. Anything else is answered StreamReject with a reason of
tunnel.codec.REASONS and counted as "rejected":
  malformed, version   the preamble is not one (or not complete in time)
  no_such_service      no such service port in the current catalog
  no_endpoint          the target is no endpoint of that service on this node
  refused_by_app       the connect into the pod failed (at the target, and when the app refused
                       there at the endpoint's other address too: dialer.connect_pod)
"""
import asyncio
import logging

from dataplane.node.dialer import connect_pod
from dataplane.settings import PREAMBLE_TIMEOUT
from dataplane.tunnel import codec as tc
from dataplane.tunnel.streams import read_preamble

log = logging.getLogger("glasswing.forwarder")


class Inbound:
    def __init__(self, *, node: str, catalog, policies, connect_local, relay, counters: dict,
                 preamble_timeout: float = PREAMBLE_TIMEOUT):
        """catalog(): the current Catalog; policies: the Policies state (connect timeouts);
        connect_local(pod, ip, port, timeout): a connected socket to the app (the dialer's);
        relay(a, b, info, to_b, to_a): the relay sink."""
        self.node = node
        self._catalog, self._policies, self._connect_local = catalog, policies, connect_local
        self._relay, self._counters = relay, counters
        self.preamble_timeout = preamble_timeout

    async def serve(self, sock) -> None:
        """Serve one accepted tunnel stream (a non-blocking socket) to its relay or rejection."""
        loop = asyncio.get_running_loop()
        self._counters["tunnel_in"] += 1
        reader = tc.PreambleReader("open")
        try:
            ev = await read_preamble(sock, reader, self.preamble_timeout)
        except tc.PreambleError as e:
            return await self._reject(sock, e.reason, str(e), "")
        except asyncio.TimeoutError:
            return await self._reject(sock, "malformed",
                                      f"no complete StreamOpen within {self.preamble_timeout}s", "")
        except OSError:
            sock.close()
            return
        sp = self._catalog().by_name.get((ev.service, ev.port))
        if sp is None:
            return await self._reject(sock, "no_such_service", f"no service {ev.service} port {ev.port}", ev.trace_id)
        local = [e for e in sp.endpoints
                 if e.node == self.node and ev.target.ip in (e.ip, e.ip6) and e.port == ev.target.port]
        if not local:
            return await self._reject(sock, "no_endpoint",
                                      f"{ev.target.ip}:{ev.target.port} is no endpoint of {ev.service} here",
                                      ev.trace_id)
        try:
            upstream = await connect_pod(self._connect_local, local[0], ev.target.ip,
                                         self._policies.settings(ev.service).connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            return await self._reject(sock, "refused_by_app", str(e), ev.trace_id)
        try:
            await loop.sock_sendall(sock, tc.encode_accept(tc.Accept(version=tc.VERSION, trace_id=ev.trace_id)))
        except OSError:
            upstream.close()
            sock.close()
            return
        self._relay(sock, upstream, (ev.service, local[0], ev.trace_id, ev.source_pod), to_b=reader.leftover)

    async def _reject(self, sock, reason, detail, trace):
        self._counters["rejected"] += 1
        log.info("tunnel stream rejected: %s: %s", reason, detail)
        try:
            await asyncio.get_running_loop().sock_sendall(
                sock, tc.encode_reject(tc.Reject(reason=reason, detail=detail[:200], trace_id=trace)))
        except OSError:
            pass
        sock.close()
