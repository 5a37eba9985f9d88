"""A real resolver on 127.0.0.1 (port 0), driven by blocking client sockets from the test thread.

The resolver's event loop runs in a background thread; the fake upstream is a plain UDP
socket on loopback served by another thread (answering, or never answering).
"""
import asyncio
import random
import socket
import struct
import threading
import time

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT

from dataplane.dns import codec as dc
from dataplane.dns.names import classify
from dataplane.dns.resolver import Resolver

from tests.support.wait import TIMEOUT, wait_until

SERVICES = {("default", "web"): "198.19.0.10", ("shop", "cart"): "198.19.0.20",
            ("default", "dual"): ["198.19.0.30", "2001:2:0:ffff::c613:1e"], ("default", "six"): ["2001:2:0:ffff::a"]}
POD = "default/client"
POD_NAMESPACES = {POD: "default"}
UPSTREAM_IP = "93.184.216.34"


def mesh_lookup(pod, name):
    mesh_lookup.calls.append((pod, name))
    return classify(name, POD_NAMESPACES[pod], "svc.glasswing", SERVICES)


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout=5):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class FakeUpstream:
    """UDP on loopback: answers A queries with UPSTREAM_IP, or stays silent."""

    def __init__(self, answer=True):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.addr = self.sock.getsockname()
        self.answer = answer
        self.received = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received.append((data, addr))
            if not self.answer:
                continue
            query = DNS(data)
            qname = query.qd[0].qname
            if self.answer == "wrong-id-first":  # a spoofed-looking reply first, then the real one
                self.sock.sendto(bytes(DNS(id=(query.id + 1) & 0xFFFF, qr=1, qd=query.qd,
                                           an=[DNSRR(rrname=qname, rdata="6.6.6.6")])), addr)
            self.sock.sendto(bytes(DNS(id=query.id, qr=1, rd=query.rd, ra=1, qd=query.qd,
                                       an=[DNSRR(rrname=qname, ttl=123, rdata=UPSTREAM_IP)])), addr)

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def start(loop_thread):
    """start(**resolver kwargs) -> (address, resolver): a resolver serving POD on loopback."""
    made = []

    def _start(lookup=mesh_lookup, pod=POD, **kw):
        mesh_lookup.calls = []
        resolver = Resolver(lookup, **kw)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        addr = sock.getsockname()
        transport = loop_thread.run(resolver.serve(sock, pod))
        made.append((resolver, transport))
        return addr, resolver

    yield _start

    async def close_all():
        for resolver, _ in made:
            resolver.close()
        await asyncio.sleep(0)  # one loop turn: the transports finish closing

    loop_thread.run(close_all())


@pytest.fixture
def upstreams():
    made = []

    def _make(answer=True):
        up = FakeUpstream(answer)
        made.append(up)
        return up

    yield _make
    for up in made:
        up.close()


@pytest.fixture
def client():
    socks = []

    def _client():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        socks.append(s)
        return s

    yield _client
    for s in socks:
        s.close()


def query(name, qtype="A", id=0x1234, qclass="IN", **kw):
    return bytes(DNS(id=id, rd=1, qd=DNSQR(qname=name, qtype=qtype, qclass=qclass), **kw))


def ask(sock, addr, data, timeout=2.0):
    sock.settimeout(timeout)
    sock.sendto(data, addr)
    reply, src = sock.recvfrom(65535)
    assert src == addr
    return reply


def silent(sock, timeout=0.3):
    sock.settimeout(timeout)
    try:
        data = sock.recv(65535)
    except socket.timeout:
        return True
    raise AssertionError(f"expected no reply, got {data!r}")


# --- mesh answers -------------------------------------------------------------------------


def test_a_answer(start, client):
    addr, resolver = start()
    resp = DNS(ask(client(), addr, query("web.default.svc.glasswing", id=0x0A0A)))
    assert resp.id == 0x0A0A and resp.qr == 1 and resp.aa == 1 and resp.rd == 1 and resp.ra == 1
    assert resp.rcode == 0 and resp.ancount == 1
    assert resp.an[0].rdata == "198.19.0.10" and resp.an[0].ttl == 5 and resp.an[0].type == 1
    assert mesh_lookup.calls == [(POD, "web.default.svc.glasswing")]
    assert resolver.counters["queries"] == 1 and resolver.counters["answered"] == 1


def test_short_name_and_ttl(start, client):
    addr, _ = start(ttl=42)
    resp = DNS(ask(client(), addr, query("WEB")))
    assert resp.an[0].rdata == "198.19.0.10" and resp.an[0].ttl == 42
    assert resp.qd[0].qname == b"WEB."


def test_any_is_answered_like_a(start, client):
    addr, _ = start()
    resp = DNS(ask(client(), addr, query("cart.shop", "ALL")))
    assert resp.rcode == 0 and resp.an[0].type == 1 and resp.an[0].rdata == "198.19.0.20"


@pytest.mark.parametrize("name", ["dual", "dual.default", "dual.default.svc.glasswing", "DUAL.Default."])
def test_aaaa_is_answered_with_the_ipv6_vip(start, client, name):
    addr, resolver = start()
    resp = DNS(ask(client(), addr, query(name, "AAAA")))
    assert resp.rcode == 0 and resp.aa == 1 and resp.ancount == 1
    assert resp.an[0].type == dc.TYPE_AAAA and resp.an[0].rdata == "2001:2:0:ffff::c613:1e"
    resp = DNS(ask(client(), addr, query(name, "A")))
    assert resp.ancount == 1 and resp.an[0].type == dc.TYPE_A and resp.an[0].rdata == "198.19.0.30"
    resp = DNS(ask(client(), addr, query(name, "ALL")))
    assert sorted((a.type, a.rdata) for a in resp.an) == [(dc.TYPE_A, "198.19.0.30"),
                                                          (dc.TYPE_AAAA, "2001:2:0:ffff::c613:1e")]
    assert resolver.counters["answered"] == 3


@pytest.mark.parametrize("name, qtype", [("web", "AAAA"), ("web.default.svc.glasswing", "AAAA"),
                                         ("six", "A"), ("six.default", "A")])
def test_a_family_the_service_lacks_gets_nodata(start, client, name, qtype):
    addr, resolver = start()
    resp = DNS(ask(client(), addr, query(name, qtype)))
    assert resp.rcode == 0 and resp.ancount == 0
    assert resolver.counters["nodata"] == 1 and resolver.counters["answered"] == 0


def test_ipv6_only_service_answers_aaaa(start, client):
    addr, _ = start()
    resp = DNS(ask(client(), addr, query("six.default.svc.glasswing", "AAAA")))
    assert resp.ancount == 1 and resp.an[0].rdata == "2001:2:0:ffff::a"


@pytest.mark.parametrize("qtype", ["MX", "TXT", "SRV"])
def test_other_types_for_a_mesh_name_get_nodata(start, client, qtype):
    addr, resolver = start()
    resp = DNS(ask(client(), addr, query("web.default.svc.glasswing", qtype)))
    assert resp.rcode == 0 and resp.ancount == 0 and resp.aa == 1
    assert resp.nscount == 1 and resp.ns[0].type == dc.TYPE_SOA  # negative caching
    assert resolver.counters["nodata"] == 1


def test_nxdomain(start, client):
    addr, resolver = start()
    resp = DNS(ask(client(), addr, query("nope.default.svc.glasswing", id=99)))
    assert resp.id == 99 and resp.rcode == 3 and resp.aa == 1 and resp.ancount == 0
    assert resp.ns[0].rrname == b"svc.glasswing." and resp.ns[0].minimum == dc.NEGATIVE_TTL
    resp = DNS(ask(client(), addr, query("nope.shop")))
    assert resp.rcode == 3 and resp.nscount == 0  # not under the zone: no SOA
    assert resolver.counters["nxdomain"] == 2


def test_class_not_in_is_refused(start, client):
    addr, resolver = start()
    resp = DNS(ask(client(), addr, query("web", qclass="CH")))
    assert resp.rcode == 5 and resp.ancount == 0
    assert resolver.counters["refused"] == 1 and mesh_lookup.calls == []


def test_opcode_not_query_is_notimp(start, client):
    addr, resolver = start()
    resp = DNS(ask(client(), addr, query("web", opcode=2)))
    assert resp.rcode == 4 and resp.opcode == 2 and resolver.counters["notimp"] == 1


def test_edns(start, client):
    addr, resolver = start()
    resp = DNS(ask(client(), addr, query("web", ar=[DNSRROPT(rclass=4096)])))
    assert resp.rcode == 0 and resp.an[0].rdata == "198.19.0.10" and resp.ar[0].type == dc.TYPE_OPT
    resp = DNS(ask(client(), addr, query("web", ar=[DNSRROPT(rclass=4096, version=1)])))
    assert resp.ancount == 0 and resp.ar[0].extrcode == 1 and resolver.counters["badvers"] == 1


def test_lookup_failure_is_servfail(start, client):
    def broken(pod, name):
        raise RuntimeError("store unavailable")

    addr, resolver = start(lookup=broken)
    assert DNS(ask(client(), addr, query("web"))).rcode == 2
    addr, resolver = start(lookup=lambda pod, name: ("weird", []))
    assert DNS(ask(client(), addr, query("web"))).rcode == 2
    assert resolver.counters["servfail"] == 1


# --- outside names ------------------------------------------------------------------------


def test_outside_without_upstream_is_refused_promptly(start, client):
    """Promptly: answered without trying any upstream (nothing forwarded)."""
    addr, resolver = start(upstream=None)
    resp = DNS(ask(client(), addr, query("www.example.com", id=0x7777)))
    assert resp.id == 0x7777 and resp.rcode == 5 and resp.aa == 0 and resp.qd[0].qname == b"www.example.com."
    assert resolver.counters["refused"] == 1 and resolver.counters["forwarded"] == 0


def test_forwarded_answer_keeps_client_id(start, client, upstreams):
    up = upstreams()
    made = []

    def factory():
        made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        return made[-1]

    addr, resolver = start(upstream=up.addr, upstream_timeout=2, socket_factory=factory)
    raw = query("www.example.com", id=0x5151)
    resp = DNS(ask(client(), addr, raw))
    assert resp.id == 0x5151 and resp.rcode == 0 and resp.ancount == 1
    assert resp.an[0].rdata == UPSTREAM_IP and resp.an[0].ttl == 123
    assert len(up.received) == 1 and len(made) == 1
    sent, _ = up.received[0]
    assert sent[2:] == raw[2:]  # the query itself is relayed unchanged, but under a fresh id
    assert resolver.counters["forwarded"] == 1
    assert made[0].fileno() == -1  # the per-query socket was closed


def test_forwarding_ignores_replies_with_another_id(start, client, upstreams):
    up = upstreams(answer="wrong-id-first")
    addr, _ = start(upstream=up.addr, upstream_timeout=2)
    resp = DNS(ask(client(), addr, query("www.example.com", id=3)))
    assert resp.id == 3 and resp.an[0].rdata == UPSTREAM_IP


def test_concurrent_forwards_get_their_own_answers(start, client, upstreams):
    up = upstreams()
    addr, _ = start(upstream=up.addr, upstream_timeout=2)
    c = client()
    names = {1000 + i: f"host{i}.example.com" for i in range(20)}
    for qid, name in names.items():
        c.sendto(query(name, id=qid), addr)
    got = {}
    while len(got) < len(names):
        resp = DNS(c.recv(65535))
        got[resp.id] = resp.qd[0].qname.decode().rstrip(".")
    assert got == names


def test_upstream_timeout_is_servfail(start, client, upstreams):
    up = upstreams(answer=False)
    addr, resolver = start(upstream=up.addr, upstream_timeout=0.3)
    resp = DNS(ask(client(), addr, query("www.example.com", id=0x2222), timeout=TIMEOUT))
    assert resp.id == 0x2222 and resp.rcode == 2 and resp.qd[0].qname == b"www.example.com."
    assert len(up.received) == 1
    assert resolver.counters["servfail"] == 1 and resolver.counters["forwarded"] == 1


def test_upstream_port_closed_is_servfail_before_the_timeout(start, client):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()
    s.close()  # nothing listens there: ICMP port unreachable
    addr, _ = start(upstream=dead, upstream_timeout=3600)  # an answer at all is before it
    assert DNS(ask(client(), addr, query("www.example.com"), timeout=TIMEOUT)).rcode == 2


def test_socket_factory_failure_is_servfail(start, client, upstreams):
    def factory():
        raise OSError(24, "Too many open files")

    addr, _ = start(upstream=upstreams().addr, socket_factory=factory)
    assert DNS(ask(client(), addr, query("www.example.com"))).rcode == 2


def test_inflight_limit(start, client, upstreams):
    up = upstreams(answer=False)
    addr, resolver = start(upstream=up.addr, upstream_timeout=1, max_inflight=1)
    c = client()
    c.sendto(query("a.example.com", id=1), addr)
    wait_until(lambda: len(up.received) == 1, what="the first query at the upstream")
    resp = DNS(ask(c, addr, query("b.example.com", id=2)))
    assert resp.id == 2 and resp.rcode == 2  # over the limit: SERVFAIL at once, before the first's
    c.settimeout(2)
    resp = DNS(c.recv(65535))
    assert resp.id == 1 and resp.rcode == 2  # the first one times out


# --- malformed ----------------------------------------------------------------------------


def test_formerr_when_the_id_can_be_read(start, client):
    addr, resolver = start()
    c = client()
    two = bytes(DNS(id=0x4242, qd=[DNSQR(qname="a"), DNSQR(qname="b")]))
    assert ask(c, addr, two) == dc.formerr(0x4242)
    pointer = struct.pack("!6H", 0x4343, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    resp = DNS(ask(c, addr, pointer))
    assert resp.id == 0x4343 and resp.qr == 1 and resp.rcode == 1 and resp.qdcount == 0
    assert DNS(ask(c, addr, struct.pack("!6H", 0x4444, 0, 1, 0, 0, 0))).rcode == 1  # header only
    assert resolver.counters["formerr"] == 3 and mesh_lookup.calls == []


@pytest.mark.parametrize("garbage", [b"", b"\x12", b"\x12\x34\x01\x00\x00\x01", b"\xff" * 11])
def test_silence_for_garbage_shorter_than_a_header(start, client, garbage):
    addr, resolver = start()
    c = client()
    c.sendto(garbage, addr)
    assert silent(c)
    assert DNS(ask(c, addr, query("web"))).an[0].rdata == "198.19.0.10"
    assert resolver.counters["dropped"] == 1


def test_responses_are_not_answered(start, client):
    addr, resolver = start()
    c = client()
    c.sendto(bytes(DNS(id=5, qr=1, qd=DNSQR(qname="web"))), addr)
    assert silent(c)
    assert resolver.counters["dropped"] == 1 and resolver.counters["formerr"] == 0


def test_still_answers_after_500_malformed_packets(start, client, loop_thread):
    addr, resolver = start()
    rng = random.Random(53)
    flood = client()
    good = query("web.default.svc.glasswing", id=0x600D)
    for i in range(500):
        kind = i % 5
        if kind == 0:
            data = rng.randbytes(rng.randrange(12))  # too short: dropped
        elif kind == 1:
            data = rng.randbytes(rng.randrange(12, 512))
        elif kind == 2:
            data = struct.pack("!6H", rng.randrange(65536), 0, rng.choice([0, 2, 0xFFFF]), 0, 0, 0) + rng.randbytes(20)
        elif kind == 3:
            data = good[:rng.randrange(12, len(good) - 1)]
        else:
            data = struct.pack("!6H", i, 0, 1, 0, 0, 0) + b"\xc0\x0c" * rng.randrange(1, 8)
        flood.sendto(data, addr)
        if i % 25 == 24:
            time.sleep(0.002)  # let the loop drain its socket: UDP drops what overflows it
    c = client()  # a fresh socket: the flood's replies may have filled the first one's buffer

    def answered():  # retried, as a stub resolver would
        try:
            resp = DNS(ask(c, addr, good, timeout=0.5))
        except socket.timeout:
            return None
        return resp if resp.id == 0x600D else None

    resp = wait_until(answered, 5, "an answer after the flood (the resolver stopped answering)", 0)
    assert resp.rcode == 0 and resp.an[0].rdata == "198.19.0.10"
    counters = loop_thread.run(_counters(resolver))
    assert counters["formerr"] > 50 and counters["dropped"] > 50 and counters["answered"] >= 1


async def _counters(resolver):
    return dict(resolver.counters)


def test_serve_two_pods_on_one_resolver(loop_thread, client):
    pods = {"default/a": "default", "shop/b": "shop"}
    resolver = Resolver(lambda pod, name: classify(name, pods[pod], None, SERVICES))
    addrs = {}
    for pod in pods:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        addrs[pod] = s.getsockname()
        loop_thread.run(resolver.serve(s, pod))
    try:
        c = client()
        assert DNS(ask(c, addrs["default/a"], query("web"))).an[0].rdata == "198.19.0.10"
        assert DNS(ask(c, addrs["shop/b"], query("cart"))).an[0].rdata == "198.19.0.20"
        assert resolver.counters["answered"] == 2
    finally:
        loop_thread.loop.call_soon_threadsafe(resolver.close)
