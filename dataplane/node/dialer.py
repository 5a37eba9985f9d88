"""The mesh dialer: how this node's forwarder reaches an endpoint it picked.

  an address outside the mesh's pods (ep.node None)   straight from the node
  a pod on this node                                  from inside the pod's namespace
  a pod on another node                               the tunnel to that node's forwarder

Which of an endpoint's addresses is dialled (address_for): the family the app dialled (the
IPv6 VIP picks the endpoint's IPv6 address when it has one, the IPv4 VIP its IPv4 one), else
the endpoint's other address; the same for the tunnel's target, which the far forwarder dials.
A pod's app that refuses on the picked address (one listening on 0.0.0.0 only, reached for
an IPv6 VIP) is tried once more on the pod's other address (connect_pod): apps keep working
unchanged when the VIP's family is not the one they listen on.

Outbound and inbound get a dialer injected, so that their logic runs in tests over any
object with the same two coroutines (open and connect_local) on loopback sockets. Every
socket made here is a forwarder socket (marked, outside any pod cgroup), so no hook ever
redirects it (dataplane/tunnel/streams.py).
"""
from dataplane.tunnel import codec as tc
from dataplane.tunnel.streams import connect_in_pod, dial, open_tunnel


def address_for(ep, dialled: str) -> str:
    """The address of endpoint ep to reach it by, for an app that dialled address `dialled`:
    of the same family when ep has one, else the other."""
    if ":" in dialled:
        return ep.ip6 or ep.ip
    return ep.ip or ep.ip6


def other_address(ep, ip: str) -> str:
    """Endpoint ep's address of the other family than ip; "" when it has none."""
    return ep.ip if ip == ep.ip6 else ep.ip6


async def connect_pod(connect_local, ep, ip: str, timeout: float = None):
    """connect_local(ep.pod, ip, ep.port, timeout), and when the app refuses there, once more at
    ep's other address if it has one (the first refusal is raised when that fails too)."""
    try:
        return await connect_local(ep.pod, ip, ep.port, timeout)
    except ConnectionRefusedError as refused:
        other = other_address(ep, ip)
        if not other:
            raise
        try:
            return await connect_local(ep.pod, other, ep.port, timeout)
        except OSError:
            raise refused from None


class MeshDialer:
    def __init__(self, node: str, cluster: str, home_fd: int, pods, peer_ip):
        """pods: a mapping of the pods attached here, name -> an object with ns_fd (kept
        current by the forwarder); peer_ip(node): that node's tunnel address, KeyError once
        the node has left the store."""
        self.node, self.cluster, self.home_fd = node, cluster, home_fd
        self._pods, self._peer_ip = pods, peer_ip

    async def open(self, pod: str, sp, dst: tuple, ep, trace: str, timeout: float):
        """(socket, bytes the far side already sent for the app) to endpoint ep of service
        port sp, for the app of pod that dialled dst. Raises OSError, TimeoutError,
        StreamRejected, PreambleError, or KeyError when ep's node left the store."""
        ip = address_for(ep, dst[0])
        if ep.node is None:  # an address outside the mesh's pods: straight from the node
            return await dial((ip, ep.port), timeout=timeout), b""
        if ep.node == self.node:
            return await connect_pod(self.connect_local, ep, ip, timeout), b""
        peer_ip = self._peer_ip(ep.node)
        msg = tc.Open(version=tc.VERSION, source_pod=pod,
                      source_identity=f"glasswing://{self.cluster}/pod/{pod}",
                      service=sp.service, port=sp.port,
                      original_dst=tc.Address(*dst), target=tc.Address(ip, ep.port),
                      trace_id=trace, source_node=self.node)
        return await open_tunnel(peer_ip, msg, timeout=timeout)

    async def connect_local(self, pod_name: str, ip: str, port: int, timeout: float = None):
        """A connection to the app at ip:port (IPv4 or IPv6) made inside pod_name's namespace;
        refused when the pod is not attached here (nothing reached an app, so another endpoint
        may be tried)."""
        pod = self._pods.get(pod_name)
        if pod is None:
            raise ConnectionRefusedError(f"pod {pod_name} is not attached on node {self.node}")
        return await connect_in_pod(pod.ns_fd, self.home_fd, ip, port, timeout=timeout)
