"""Outbound's glue to the policy units, without sockets of the mesh:
which failures are retried elsewhere, the ring hash key at L4, and the
relay set that reports closed relays."""
import asyncio
import errno
import socket

from dataplane.tunnel import codec as tc
from dataplane.node.counters import REFUSALS, Counters
from dataplane.node.outbound import failure_reason, source_key
from dataplane.node.relays import RelaySet
from dataplane.tunnel.streams import StreamRejected


def test_peer_rejections_that_never_reached_the_app_are_refusals():
    assert failure_reason(StreamRejected("refused_by_app", "connection refused")) == "refused"
    assert failure_reason(StreamRejected("no_endpoint", "gone")) == "refused"
    assert failure_reason(StreamRejected("version", "99")) == "rejected"


def test_local_failures_keep_connect_retry_classes():
    assert failure_reason(ConnectionRefusedError()) == "refused"
    assert failure_reason(asyncio.TimeoutError()) == "timeout"
    assert failure_reason(OSError(errno.EHOSTUNREACH, "no route")) == "unreachable"
    assert failure_reason(KeyError("n9")) == "unreachable"  # the endpoint's node left the store
    assert failure_reason(tc.PreambleError("malformed", "x")) == "other"


class Pod:
    def __init__(self, ip):
        self.rec, self.name = {"ip": ip}, "client"


def test_source_key_is_the_pod_address_behind_loopback():
    ls = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(ls.getsockname())
    conn, _ = ls.accept()
    try:
        assert source_key(Pod("198.18.1.2"), conn) == "198.18.1.2"
        conn.close()
        assert source_key(Pod("198.18.1.2"), conn) == "198.18.1.2"  # closed: still the pod
    finally:
        for s in (c, conn, ls):
            s.close()


def test_relay_set_reports_each_relay_leaving_once():
    gone = []
    rs = RelaySet(gone.append)
    rs.add("r1")
    rs.add("r2")
    rs.discard("r1")
    rs.discard("r1")
    rs.discard("never-added")
    assert gone == ["r1"] and rs == {"r2"} and len(rs) == 1


def test_every_refusal_reason_is_a_stats_key():
    assert set(REFUSALS) == {"no_service", "rate_limit", "max_connections", "max_pending", "no_endpoint",
                             "connect_failed"}
    assert {f"refused_{r}" for r in REFUSALS} <= set(Counters())
