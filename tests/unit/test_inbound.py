"""node.inbound over loopback, no root: a peer on loopback speaks the real tunnel codec to the
real Acceptor and Inbound, whose connect into the pod is a plain loopback connect (the
forwarder's dialer makes it inside the pod's namespace, which needs root).

    peer (StreamOpen + app bytes) --TCP--> tunnel listener: Acceptor -> Inbound.serve
                                                --connect_local--> app (echo) on loopback
"""
import asyncio
import random

from dataplane.node.accept import Acceptor
from dataplane.node.counters import Counters
from dataplane.node.inbound import Inbound
from dataplane.node.relays import RelaySink
from dataplane.policy.state import Policies
from dataplane.store.catalog import Catalog
from dataplane.store import registry
from dataplane.store.registry import _empty
from dataplane.tunnel import codec as tc

from tests.support.sockets import LoopbackListener, connected, echo_server, refusing_port
from tests.support.wait import run

TRACE = "ab" * 16


def mesh_doc(endpoints, ip6=""):
    """Service default/web port 80 with endpoints [(pod, node, port)] on 127.0.0.1 (and ip6)."""
    doc = _empty()
    doc["services"]["default/web"] = {"namespace": "default", "name": "web", "labels": {},
                                      "vip": "198.19.0.10", "ports": [{"port": 80, "target": 8080}],
                                      "endpoints": [], "selector": {"app": "web"}, "health_check": None}
    for pod, node, port in endpoints:
        doc["endpoints"][f"/glasswing/endpoints/{node}/default/web/80/{pod}:{port}"] = {
            "service": "default/web", "service_port": 80, "pod": pod, "node": node,
            "ip": "127.0.0.1", "ip6": ip6, "port": port, "health": "healthy", "labels": {}}
    return doc


class Node(LoopbackListener):
    """Node n1's tunnel listener on loopback, served by the real collaborators."""

    def __init__(self, doc):
        super().__init__()
        self.counters = Counters()
        policies = Policies(rng=random.Random(1))
        snapshot = registry.snapshot(doc)
        catalog = Catalog(snapshot)
        policies.update(catalog, snapshot)
        self.connects, self.dialled = [], []
        self.sink = RelaySink("copy")
        self.inbound = Inbound(node="n1", catalog=lambda: catalog, policies=policies,
                               connect_local=self.connect_local, relay=self.sink.relay,
                               counters=self.counters, preamble_timeout=0.5)

    async def connect_local(self, pod, ip, port, timeout=None):
        self.connects.append(pod)
        self.dialled.append(ip)
        return await connected((ip, port), timeout)

    def __enter__(self):
        self.spawn(Acceptor(self.spawn, self.counters, {}).loop(self.listener, self.inbound.serve))
        return self

    def __exit__(self, *exc):
        self.close()
        self.sink.close()


def stream_open(port, service="default/web", service_port=80, target="127.0.0.1", vip="198.19.0.10"):
    return tc.encode_open(tc.Open(version=tc.VERSION, source_pod="client", source_identity="glasswing://c/pod/client",
                                  service=service, port=service_port,
                                  original_dst=tc.Address(vip, 80),
                                  target=tc.Address(target, port), trace_id=TRACE, source_node="n2"))


async def peer(addr, first: bytes, then: bytes = b""):
    """Send first (a preamble and maybe app bytes), read the reply; on Accept send then,
    half-close and read the app's bytes to the end. (reply event, app bytes)."""
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(first)
        await writer.drain()
        pre = tc.PreambleReader("reply")
        event = None
        while event is None:
            data = await reader.read(4096)
            assert data, "the tunnel closed without a reply"
            event = pre.feed(data)
        if not isinstance(event, tc.Accept):
            return event, b""
        writer.write(then)
        writer.write_eof()
        return event, pre.leftover + await reader.read()
    finally:
        writer.close()


def test_a_good_stream_is_accepted_and_relays_bytes_both_ways():
    async def main():
        server, port = await echo_server()
        with Node(mesh_doc([("app", "n1", port)])) as node:
            event, got = await peer(node.addr, stream_open(port) + b"early ", b"and late")
            assert event == tc.Accept(version=tc.VERSION, trace_id=TRACE)
            assert got == b"early and late"  # bytes sent with the preamble reach the app first
            assert node.connects == ["app"]
            assert node.counters["tunnel_in"] == 1 and node.counters["rejected"] == 0
        server.close()
    run(main())


def test_an_ipv6_target_is_dialled_over_ipv6():
    async def main():
        server, port = await echo_server("::1")  # the app listens on its IPv6 address only
        with Node(mesh_doc([("app", "n1", port)], ip6="::1")) as node:
            event, got = await peer(node.addr, stream_open(port, target="::1", vip="2001:2:0:ffff::c613:a") + b"six",
                                    b" over the tunnel")
            assert isinstance(event, tc.Accept) and got == b"six over the tunnel"
            assert node.dialled == ["::1"]
        server.close()
    run(main())


def test_an_app_refusing_the_ipv6_target_is_reached_at_the_pods_ipv4_address():
    async def main():
        server, port = await echo_server("127.0.0.1")  # an app that listens on IPv4 only
        with Node(mesh_doc([("app", "n1", port)], ip6="::1")) as node:
            event, got = await peer(node.addr, stream_open(port, target="::1") + b"four", b" after all")
            assert isinstance(event, tc.Accept) and got == b"four after all"
            assert node.dialled == ["::1", "127.0.0.1"]
        server.close()
    run(main())


def test_an_ipv6_target_that_is_no_endpoint_here_is_rejected():
    doc = mesh_doc([("app", "n1", 9)], ip6="2001:2::c612:102")
    assert rejection(doc, stream_open(9, target="2001:2::c612:103")).reason == "no_endpoint"


def rejection(doc, first, connects=()):
    async def main():
        with Node(doc) as node:
            event, _ = await peer(node.addr, first)
            assert isinstance(event, tc.Reject), event
            assert node.counters["rejected"] == 1 and node.counters["tunnel_in"] == 1
            assert node.connects == list(connects)
            return event
    return run(main())


def test_an_unknown_service_port_is_rejected():
    doc = mesh_doc([("app", "n1", 9)])
    assert rejection(doc, stream_open(9, service="default/nope")).reason == "no_such_service"
    assert rejection(doc, stream_open(9, service_port=81)).reason == "no_such_service"


def test_a_target_that_is_no_endpoint_here_is_rejected():
    doc = mesh_doc([("app", "n1", 9), ("far", "n2", 10)])
    assert rejection(doc, stream_open(10)).reason == "no_endpoint"  # an endpoint of another node
    assert rejection(doc, stream_open(11)).reason == "no_endpoint"  # no endpoint at all


def test_a_malformed_or_incomplete_preamble_is_rejected():
    doc = mesh_doc([("app", "n1", 9)])
    event = rejection(doc, b"\x05hello")  # a length prefix, then no StreamOpen
    assert event.reason == "malformed" and event.trace_id == ""
    event = rejection(doc, stream_open(9)[:7])  # cut short: the preamble timeout ends it
    assert event.reason == "malformed" and "no complete StreamOpen" in event.detail


def test_an_app_that_refuses_is_reported_to_the_peer():
    hole, port = refusing_port()
    try:
        event = rejection(mesh_doc([("app", "n1", port)]), stream_open(port), connects=["app"])
        assert event.reason == "refused_by_app" and event.trace_id == TRACE
    finally:
        hole.close()
