import random
import re
import uuid

import pytest

from dataplane.http import trace_context as tc

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_valid():
    tp = tc.parse_traceparent(VALID)
    assert tp == tc.TraceParent(0, "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    assert tp.sampled
    assert tp.header_value() == VALID.encode()
    assert tc.parse_traceparent(VALID.encode()) == tp


@pytest.mark.parametrize("value", [
    "",
    VALID[:-1],
    VALID + "-",  # version 00 is exactly 55 characters
    VALID.upper(),  # hex must be lowercase
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # future version: 56th must be '-'
    b"00-\xff",
])
def test_parse_invalid(value):
    assert tc.parse_traceparent(value) is None


def test_future_versions_parse_their_first_55_characters():
    tp = tc.parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next")
    assert tp.version == 0xCC and tp.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tc.parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").version == 1
    assert tp.header_value().startswith(b"00-")


def test_new_traceparent_is_valid_and_seeded():
    a = tc.new_traceparent(random.Random(5))
    assert a == tc.new_traceparent(random.Random(5))
    assert tc.parse_traceparent(a.header_value()) == a
    assert a != tc.new_traceparent(random.Random(6))
    assert not a.sampled and tc.new_traceparent(random.Random(5), sampled=True).sampled


def test_new_traceparent_never_zero():
    class Zeros:
        def __init__(self):
            self.calls = 0

        def getrandbits(self, n):
            self.calls += 1
            return 0 if self.calls in (1, 3) else 1

    tp = tc.new_traceparent(Zeros())
    assert tp.trace_id == "0" * 31 + "1" and tp.parent_id == "0" * 15 + "1"


def test_absent_headers_are_added():
    headers = ((b"Host", b"a"),)
    result = tc.ensure_trace(headers, random.Random(1))
    assert result.started
    assert result.headers[0] == (b"Host", b"a")
    names = [n for n, _ in result.headers]
    assert names == [b"Host", b"traceparent", b"x-request-id"]
    assert tc.parse_traceparent(result.headers[1][1]) == result.traceparent
    rid = uuid.UUID(result.request_id)
    assert rid.version == 4 and result.headers[2][1] == result.request_id.encode()


def test_valid_headers_pass_unchanged():
    headers = ((b"Host", b"a"), (b"TraceParent", VALID.encode()), (b"tracestate", b"v=1"), (b"X-Request-ID", b"abc-123"))
    result = tc.ensure_trace(headers, random.Random(1))
    assert result.headers == headers
    assert not result.started and result.request_id == "abc-123"
    assert result.traceparent.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("bad", [
    ((b"traceparent", b"garbage"),),
    ((b"traceparent", VALID.encode()), (b"traceparent", VALID.encode())),  # more than one
])
def test_invalid_traceparent_is_replaced_and_tracestate_dropped(bad):
    headers = ((b"Host", b"a"),) + bad + ((b"tracestate", b"vendor=1"), (b"x-request-id", b"r1"))
    result = tc.ensure_trace(headers, random.Random(2))
    assert result.started
    parents = [v for n, v in result.headers if n.lower() == b"traceparent"]
    assert len(parents) == 1 and tc.parse_traceparent(parents[0]) == result.traceparent
    assert not any(n.lower() == b"tracestate" for n, _ in result.headers)
    assert result.request_id == "r1"


def test_empty_request_id_is_replaced():
    result = tc.ensure_trace(((b"X-Request-Id", b""), (b"traceparent", VALID.encode())), random.Random(3))
    ids = [v for n, v in result.headers if n.lower() == b"x-request-id"]
    assert len(ids) == 1 and re.fullmatch(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", ids[0])
    assert not result.started


def test_new_request_id_is_deterministic_per_seed():
    assert tc.new_request_id(random.Random(9)) == tc.new_request_id(random.Random(9))
    assert tc.new_request_id(random.Random(9)) != tc.new_request_id(random.Random(10))
