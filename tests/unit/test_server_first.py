"""node.server_first: the marks of service ports learned as server-first (an injected clock,
no waiting), and first_speaker over loopback socket pairs."""
import socket

from dataplane.node.server_first import CLIENT, SERVER, ServerFirstPorts, first_speaker, has_bytes

from tests.support.wait import run

KEY = ("default/db", 3306)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_port_is_sniffed_until_a_connection_shows_it_server_first():
    marks = ServerFirstPorts(clock=Clock())
    assert not marks.skip(KEY)
    marks.seen(KEY, None)  # nothing learned: still sniffed
    assert not marks.skip(KEY)
    marks.seen(KEY, SERVER)
    assert [marks.skip(KEY) for _ in range(3)] == [True, True, True]
    assert marks.status() == [{"service": "default/db", "port": 3306, "age_s": 0.0,
                               "expires_in_s": marks.ttl, "skipped": 3, "probing": False}]


def test_a_client_that_speaks_first_drops_the_mark():
    marks = ServerFirstPorts(clock=Clock())
    marks.seen(KEY, SERVER)
    marks.seen(KEY, CLIENT)
    assert not marks.skip(KEY) and marks.status() == []


def test_an_expired_mark_sends_one_probe_while_the_others_keep_skipping():
    clock = Clock()
    marks = ServerFirstPorts(ttl=60, clock=clock)
    marks.seen(KEY, SERVER)
    clock.now += 59.9
    assert marks.skip(KEY)
    clock.now += 0.1
    assert not marks.skip(KEY)  # the probe
    assert marks.skip(KEY) and marks.skip(KEY)  # the others while it is out
    assert marks.status()[0]["probing"]
    marks.seen(KEY, SERVER)  # still server-first: renewed for another ttl
    clock.now += 59
    assert marks.skip(KEY)
    (mark,) = marks.status()
    assert mark["age_s"] == 59 and mark["expires_in_s"] == 1 and mark["skipped"] == 4
    assert not mark["probing"]


def test_a_probe_that_saw_nothing_frees_the_slot_for_the_next_connection():
    clock = Clock()
    marks = ServerFirstPorts(ttl=60, clock=clock)
    marks.seen(KEY, SERVER)
    clock.now += 61
    assert not marks.skip(KEY)
    marks.seen(KEY, None)  # the probe's client hung up
    assert not marks.skip(KEY)  # the next connection probes
    marks.seen(KEY, CLIENT)  # and finds a client that speaks first
    assert not marks.skip(KEY) and len(marks) == 0


def test_marks_are_bounded_forgetting_the_one_learned_longest_ago():
    marks = ServerFirstPorts(capacity=3, clock=Clock())
    for port in (1, 2, 3):
        marks.seen(("s", port), SERVER)
    marks.seen(("s", 1), SERVER)  # renewed: now the newest
    marks.seen(("s", 4), SERVER)
    assert [(m["service"], m["port"]) for m in marks.status()] == [("s", 3), ("s", 1), ("s", 4)]
    assert not marks.skip(("s", 2))


def test_prune_drops_the_ports_rejected():
    marks = ServerFirstPorts(clock=Clock())
    marks.seen(("a", 1), SERVER)
    marks.seen(("b", 1), SERVER)
    marks.prune(lambda key: key[0] == "b")
    assert [m["service"] for m in marks.status()] == ["b"]


def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_first_speaker_sees_who_sent_bytes_first_and_reads_nothing():
    async def main():
        client, app = pair()
        upstream, server = pair()
        server.send(b"220 greeting\r\n")
        assert await first_speaker(client, upstream, b"", wait=5) == SERVER
        assert upstream.recv(100) == b"220 greeting\r\n"  # peeked, not read
        app.send(b"GET / HTTP/1.1\r\n")
        assert await first_speaker(client, upstream, b"", wait=5) == CLIENT
        assert has_bytes(client) and not has_bytes(upstream)
        for s in (client, app, upstream, server):
            s.close()
    run(main())


def test_first_speaker_counts_bytes_that_came_with_the_tunnel_answer_and_gives_up_on_silence():
    async def main():
        client, app = pair()
        upstream, server = pair()
        assert await first_speaker(client, upstream, b"greeting", wait=5) == SERVER
        assert await first_speaker(client, upstream, b"", wait=0) is None  # nobody spoke
        app.close()  # a client that hangs up is no verdict
        assert await first_speaker(client, upstream, b"", wait=5) is None
        for s in (client, upstream, server):
            s.close()
    run(main())
