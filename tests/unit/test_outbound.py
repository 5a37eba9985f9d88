"""node.outbound over loopback, no root: the real Acceptor, Outbound, MeshHttp and RelaySink,
with the two seams the forwarder fills with kernel-backed parts filled here: the original
destination (SO_ORIGINAL_DST in the forwarder) is given, and the dialer connects to
127.0.0.1:endpoint port with plain sockets (the forwarder's dialer makes marked sockets in
pod namespaces, which needs root).

    app --TCP--> pod listener: Acceptor -> Outbound.serve --LoopbackDialer--> endpoint servers
                                                 '-> RelaySink (bytes both ways)
"""
import asyncio
import random

import pytest

from dataplane.http.proxy import ServicePolicy
from dataplane.node.accept import Acceptor
from dataplane.node.counters import REFUSALS, Counters
from dataplane.node.mesh_http import MeshHttp
from dataplane.node.outbound import Outbound
from dataplane.node.relays import RelaySink
from dataplane.node.server_first import SERVER, ServerFirstPorts
from dataplane.policy.state import Policies
from dataplane.store import codec, registry
from dataplane.store import schema as cs
from dataplane.store.catalog import Catalog
from dataplane.store.registry import _empty

from tests.support.sockets import LoopbackListener, connected, echo_server, refusing_port
from tests.support.wait import run, wait_until_async

VIP = "198.19.0.10"


def mesh_doc(ports, protocol="tcp", policy=None):
    """A store document with service default/web on VIP:80 whose endpoints are on loopback at
    ports (pods p0, p1, ... on node n1, in that order)."""
    doc = _empty()
    doc["services"]["default/web"] = {"namespace": "default", "name": "web", "labels": {}, "vip": VIP,
                                      "ports": [{"port": 80, "target": 8080, "protocol": protocol}],
                                      "endpoints": [], "selector": {"app": "web"}, "health_check": None}
    for i, port in enumerate(ports):
        doc["endpoints"][f"/glasswing/endpoints/n1/default/web/80/p{i}:{port}"] = {
            "service": "default/web", "service_port": 80, "pod": f"p{i}", "node": "n1",
            "ip": "127.0.0.1", "port": port, "health": "healthy", "labels": {}}
    if policy is not None:
        doc["config"]["trafficpolicy"]["default/p"] = codec.to_typed(cs.validate(
            {"apiVersion": cs.API_VERSION, "kind": "TrafficPolicy", "metadata": {"name": "p"},
             "spec": {"service": "web", **policy}}, "test", 1))
    return doc


class LoopbackDialer:
    """The dialer seam: every endpoint is 127.0.0.1:ep.port, reached with the forwarder's own
    non-blocking connect. Records each try's endpoint pod."""

    def __init__(self):
        self.tries = []

    async def open(self, pod, sp, dst, ep, trace, timeout):
        self.tries.append(ep.pod)
        return await connected(("127.0.0.1", ep.port), timeout), b""


class Pod:
    name, rec = "client", {"ip": "198.18.1.9"}


class Node(LoopbackListener):
    """One pod's outbound listener on loopback, served by the real collaborators."""

    def __init__(self, doc, relay="copy", dst=(VIP, 80), clock=None, server_first=None):
        super().__init__()
        self.counters, self.errors = Counters(), {}
        self.policies = Policies(rng=random.Random(7), **({"clock": clock} if clock else {}))
        snapshot = registry.snapshot(doc)
        self.catalog = Catalog(snapshot)
        self.policies.update(self.catalog, snapshot)
        self.dialer = LoopbackDialer()
        self.outbound = None
        self.sink = RelaySink(relay, on_gone=lambda r: self.outbound.relay_gone(r))
        self.http = MeshHttp(catalog=lambda: self.catalog, policies=self.policies, dialer=self.dialer,
                             relay=self.sink.relay, http_policy=lambda s, p: ServicePolicy(),
                             attached=lambda name: name == Pod.name, counters=self.counters)
        self.outbound = Outbound(catalog=lambda: self.catalog, policies=self.policies, dialer=self.dialer,
                                 relay=self.sink.relay, http=self.http.serve, counters=self.counters,
                                 destination=lambda conn: dst, server_first=server_first)

    def __enter__(self):
        acceptor = Acceptor(self.spawn, self.counters, self.errors)
        self.spawn(acceptor.loop(self.listener, lambda c: self.outbound.serve(Pod(), c)))
        return self

    def __exit__(self, *exc):
        self.close()
        self.sink.close()
        self.http.close()

    def refused(self):
        return {r: self.counters[f"refused_{r}"] for r in REFUSALS if self.counters[f"refused_{r}"]}


async def exchange(addr, data=b"hello", half_close=True):
    """Send data, half-close (unless told not to), and return everything read until the peer closes (b"" for a
    connection the forwarder reset or closed without answering)."""
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize("relay", ["copy", "engine"])
def test_a_refused_endpoint_is_retried_on_the_next_and_bytes_flow(relay):
    async def main():
        server, good = await echo_server()
        hole, bad = refusing_port()
        # pods p0 (refused) and p1 (echo): of two connections, exactly one starts at p0
        with Node(mesh_doc([bad, good]), relay=relay) as node:
            assert await exchange(node.addr, b"one") == b"one"
            assert await exchange(node.addr, b"two") == b"two"
            tries = node.dialer.tries
            assert tries.count("p0") == 1 and tries[tries.index("p0") + 1] == "p1", tries
            assert node.counters["connect_failures"] == 1 and node.counters["connect_retries"] == 1
            assert node.refused() == {} and node.counters["accepted"] == 2
            await wait_until_async(lambda: not node.outbound.attempts, what="the relays' policy holds released")
        hole.close()
        server.close()
    run(main())


def test_every_endpoint_refused_gives_up_as_connect_failed():
    async def main():
        hole, bad = refusing_port()
        with Node(mesh_doc([bad])) as node:
            assert await exchange(node.addr) == b""
            assert node.dialer.tries == ["p0", "p0"]  # one retry (the default), on the only one
            assert node.refused() == {"connect_failed": 1} and node.counters["reset"] == 1
            assert not node.outbound.attempts
        hole.close()
    run(main())


def test_no_service_port_at_the_destination_is_refused_as_no_service():
    async def main():
        for dst in ((VIP, 81), None):  # a VIP without that port; no original destination
            with Node(mesh_doc([9]), dst=dst) as node:
                assert await exchange(node.addr) == b""
                assert node.refused() == {"no_service": 1} and node.dialer.tries == []
    run(main())


def test_a_service_without_endpoints_is_refused_as_no_endpoint():
    async def main():
        with Node(mesh_doc([])) as node:
            assert await exchange(node.addr) == b""
            assert node.refused() == {"no_endpoint": 1} and node.dialer.tries == []
    run(main())


def test_the_rate_limit_refuses_past_the_burst():
    async def main():
        server, good = await echo_server()
        policy = {"rateLimit": {"tokensPerSecond": 1, "burst": 1}}
        with Node(mesh_doc([good], policy=policy), clock=lambda: 100.0) as node:  # no refill
            assert await exchange(node.addr, b"first") == b"first"
            assert await exchange(node.addr, b"second") == b""
            assert node.refused() == {"rate_limit": 1} and node.dialer.tries == ["p0"]
        server.close()
    run(main())


def test_sniffed_http_goes_through_a_session_to_the_endpoint():
    async def main():
        seen = []

        async def http_ok(reader, writer):
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(http_ok, "127.0.0.1", 0)
        with Node(mesh_doc([server.sockets[0].getsockname()[1]], protocol="")) as node:
            answer = await exchange(node.addr, b"GET /x HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
                                  half_close=False)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
            assert seen and seen[0].startswith(b"GET /x HTTP/1.1")
            assert node.counters["sniffed_http"] == 1 and node.counters["http_sessions"] == 1
            assert node.dialer.tries == ["p0"] and node.http.metrics["requests"] == 1
        server.close()
    run(main())


def test_sniffed_opaque_bytes_reach_the_endpoint_first():
    async def main():
        server, good = await echo_server()
        with Node(mesh_doc([good], protocol="")) as node:
            assert await exchange(node.addr, b"\x00binary, not http") == b"\x00binary, not http"
            assert node.counters["sniffed_opaque"] == 1 and node.counters["http_sessions"] == 0
        server.close()
    run(main())


async def greeting_server():
    """A server-first app (as SMTP or MySQL): a greeting line on accept, then an echo."""
    async def greet(reader, writer):
        writer.write(b"220 db ready\n")
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()
    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def server_first_exchange(addr, data=b"select 1"):
    """Wait for the greeting, then send data and read its echo: (greeting, echo)."""
    reader, writer = await asyncio.open_connection(*addr)
    try:
        greeting = await reader.readline()
        writer.write(data)
        writer.write_eof()
        return greeting, await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("relay", ["copy", "engine"])
def test_a_server_first_port_is_sniffed_once_then_relayed_at_once(relay):
    async def main():
        server, port = await greeting_server()
        clock = [0.0]
        marks = ServerFirstPorts(clock=lambda: clock[0])
        with Node(mesh_doc([port], protocol=""), relay=relay, server_first=marks) as node:
            for i in range(3):
                assert await server_first_exchange(node.addr, b"q%d" % i) == (b"220 db ready\n", b"q%d" % i)
            c = node.counters
            assert (c["sniffed_opaque"], c["server_first_learned"], c["sniff_skipped"]) == (1, 1, 2)
            assert node.outbound.status()["server_first"] == [
                {"service": "default/web", "port": 80, "age_s": 0.0, "expires_in_s": marks.ttl,
                 "skipped": 2, "probing": False}]
            clock[0] += marks.ttl  # expired: the next connection probes, and renews the mark
            assert await server_first_exchange(node.addr) == (b"220 db ready\n", b"select 1")
            assert (c["sniffed_opaque"], c["server_first_learned"], c["sniff_skipped"]) == (2, 2, 2)
            assert node.outbound.status()["server_first"][0]["expires_in_s"] == marks.ttl
        server.close()
    run(main())


def test_an_http_client_on_a_port_wrongly_marked_is_relayed_and_unmarks_it():
    async def main():
        async def http_ok(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(http_ok, "127.0.0.1", 0)
        marks = ServerFirstPorts(clock=lambda: 0.0)
        marks.seen(("default/web", 80), SERVER)
        request = b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n"
        with Node(mesh_doc([server.sockets[0].getsockname()[1]], protocol=""), server_first=marks) as node:
            first = await exchange(node.addr, request, half_close=False)
            assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"ok")  # opaque, still served
            c = node.counters
            assert (c["sniff_skipped"], c["server_first_refuted"], c["http_sessions"]) == (1, 1, 0)
            assert node.outbound.status()["server_first"] == []
            second = await exchange(node.addr, request, half_close=False)
            assert second.startswith(b"HTTP/1.1 200") and c["sniffed_http"] == 1 and c["http_sessions"] == 1
        server.close()
    run(main())


def test_a_client_first_port_whose_clients_are_slow_is_not_marked():
    """A client silent through the deadline whose upstream stays silent too (an idle pooled
    connection of a client-first protocol) marks nothing."""
    async def main():
        server, good = await echo_server()
        with Node(mesh_doc([good], protocol="")) as node:
            reader, writer = await asyncio.open_connection(*node.addr)
            await wait_until_async(lambda: node.counters["sniffed_opaque"] == 1, what="the sniff given up")
            writer.write(b"late")
            writer.write_eof()
            assert await reader.read() == b"late"
            writer.close()
            assert node.counters["server_first_learned"] == 0 and node.outbound.status()["server_first"] == []
        server.close()
    run(main())


def test_marks_of_a_service_port_gone_from_the_catalog_are_dropped():
    async def main():
        marks = ServerFirstPorts(clock=lambda: 0.0)
        marks.seen(("default/web", 80), SERVER)
        marks.seen(("default/gone", 5), SERVER)
        with Node(mesh_doc([9], protocol=""), server_first=marks) as node:
            assert [m["service"] for m in node.outbound.status()["server_first"]] == ["default/web"]
            node.catalog = Catalog(registry.snapshot(mesh_doc([9], protocol="tcp")))  # now declared
            assert node.outbound.status()["server_first"] == []
    run(main())
