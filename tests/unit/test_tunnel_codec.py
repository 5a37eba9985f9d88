import random

import pytest

from dataplane.tunnel import codec as tc
from dataplane.proto import tunnel_pb2 as pb

OPEN = tc.Open(
    version=tc.VERSION, source_pod="default/client-7f9c", source_identity="spiffe://cluster.local/ns/default/sa/client",
    service="default/echo", port=8080, original_dst=tc.Address("10.96.0.12", 8080),
    target=tc.Address("10.244.1.7", 9090), trace_id="4bf92f3577b34da6", source_node="node-a",
)


def varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(out + bytes([n]))


def frame(msg):
    """Length-delimit an arbitrary pb message, bypassing the codec's checks."""
    body = msg.SerializeToString()
    return varint(len(body)) + body


def open_pb(**changes):
    fields = dict(version=1, service="default/echo", port=8080,
                  original_dst=pb.Address(ip=int("0a60000c", 16), port=8080),
                  target=pb.Address(ip=int("0af40107", 16), port=9090))
    fields.update(changes)
    return pb.StreamOpen(**fields)


def reject_reason(data, kind="open"):
    with pytest.raises(tc.PreambleError) as info:
        tc.PreambleReader(kind).feed(data)
    return info.value.reason


# --- round trips --------------------------------------------------------------------------

def test_open_round_trip():
    data = tc.encode_open(OPEN)
    r = tc.PreambleReader("open")
    assert r.feed(data) == OPEN
    assert r.leftover == b""


def test_open_wire_format_is_varint_length_then_stream_open():
    small = tc.Open(1, "p", "i", "s", 80, tc.Address("10.96.0.12", 8080), tc.Address("10.244.1.7", 9090), "t", "n")
    data = tc.encode_open(small)
    assert data[0] == len(data) - 1 < 0x80  # one-byte varint length, then the message
    m = pb.StreamOpen()
    m.ParseFromString(data[1:])
    assert (m.version, m.service, m.port) == (1, "s", 80)
    assert m.target.ip == 0x0AF40107  # 10.244.1.7 as a host-order number
    assert m.original_dst.ip == 0x0A60000C and m.original_dst.port == 8080


def test_long_open_uses_multibyte_prefix():
    big = tc.Open(**{**OPEN.__dict__, "source_identity": "x" * 1000})
    data = tc.encode_open(big)
    assert data[0] & 0x80  # two-byte varint
    assert tc.PreambleReader("open").feed(data) == big


def test_accept_round_trip():
    a = tc.Accept(version=tc.VERSION, trace_id="abc")
    r = tc.PreambleReader("reply")
    assert r.feed(tc.encode_accept(a)) == a
    assert r.leftover == b""


@pytest.mark.parametrize("reason", tc.REASONS)
def test_every_reject_reason_round_trips(reason):
    rej = tc.Reject(reason=reason, detail=f"because {reason}", trace_id="t1")
    assert tc.PreambleReader("reply").feed(tc.encode_reject(rej)) == rej


def test_reasons_match_the_proto_enum():
    assert tc.REASONS == ("no_such_service", "no_endpoint", "refused_by_app", "policy", "malformed", "version")
    assert [pb.RejectReason.Name(i).lower() for i in range(1, 7)] == list(tc.REASONS)


def test_encode_reject_refuses_unknown_reason():
    with pytest.raises(ValueError):
        tc.encode_reject(tc.Reject(reason="nope", detail="", trace_id=""))


@pytest.mark.parametrize("change", [{"service": ""}, {"port": 0}, {"port": 65536},
                                    {"target": tc.Address("10.0.0.1", 0)}])
def test_encode_open_refuses_what_the_reader_would_reject(change):
    with pytest.raises(ValueError):
        tc.encode_open(tc.Open(**{**OPEN.__dict__, **change}))


# --- incremental feeding and leftover -----------------------------------------------------

@pytest.mark.parametrize("kind,data,event", [
    ("open", tc.encode_open(OPEN), OPEN),
    ("reply", tc.encode_accept(tc.Accept(1, "t")), tc.Accept(1, "t")),
    ("reply", tc.encode_reject(tc.Reject("no_endpoint", "none ready", "t")), tc.Reject("no_endpoint", "none ready", "t")),
])
def test_byte_at_a_time(kind, data, event):
    r = tc.PreambleReader(kind)
    results = [r.feed(data[i:i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == event
    assert r.leftover == b""


def test_leftover_in_same_chunk_is_preserved_exactly():
    app = b"\x00\x01GET / HTTP/1.1\r\n\r\n\xff" * 3
    r = tc.PreambleReader("open")
    assert r.feed(tc.encode_open(OPEN) + app) == OPEN
    assert r.leftover == app


def test_leftover_split_across_feeds():
    data = tc.encode_accept(tc.Accept(1, "t")) + b"hello world"
    r = tc.PreambleReader("reply")
    assert r.feed(data[:3]) is None
    assert r.feed(data[3:-5]) == tc.Accept(1, "t")
    assert r.leftover == b"hello "


def test_feed_after_event_raises():
    r = tc.PreambleReader("reply")
    r.feed(tc.encode_accept(tc.Accept(1, "")))
    with pytest.raises(RuntimeError):
        r.feed(b"more")


def test_leftover_before_event_raises():
    with pytest.raises(RuntimeError):
        tc.PreambleReader("open").leftover


def test_truncated_preamble_is_incomplete_not_an_error():
    data = tc.encode_open(OPEN)
    r = tc.PreambleReader("open")
    assert r.feed(data[:-1]) is None
    assert r.buffered == len(data) - 1
    assert r.feed(b"") is None
    assert r.feed(data[-1:]) == OPEN


def test_empty_and_partial_varint_are_incomplete():
    r = tc.PreambleReader("open")
    assert r.feed(b"") is None
    assert r.feed(b"\x80") is None  # continuation bit: more prefix to come


# --- bad input ----------------------------------------------------------------------------

def test_oversized_length_rejected_before_body():
    r = tc.PreambleReader("open")
    with pytest.raises(tc.PreambleError) as info:
        r.feed(varint(tc.MAX_PREAMBLE + 1))  # prefix only, no body
    assert info.value.reason == "malformed"
    assert "16385" in str(info.value)


def test_custom_max_size():
    data = tc.encode_open(OPEN)
    size = len(data) - 2  # OPEN is over 127 bytes: two-byte length prefix
    with pytest.raises(tc.PreambleError):
        tc.PreambleReader("open", max_size=size - 1).feed(data[:2])
    assert tc.PreambleReader("open", max_size=size).feed(data) == OPEN


def test_zero_length_rejected():
    assert reject_reason(b"\x00") == "malformed"
    assert reject_reason(b"\x00", "reply") == "malformed"


def test_six_byte_varint_rejected():
    assert reject_reason(b"\xff" * 6) == "malformed"


def test_six_byte_varint_rejected_byte_at_a_time():
    r = tc.PreambleReader("open")
    for _ in range(4):
        assert r.feed(b"\xff") is None
    with pytest.raises(tc.PreambleError) as info:
        r.feed(b"\xff")  # fifth byte still has the continuation bit
    assert info.value.reason == "malformed"


def test_varint_over_32_bits_rejected():
    assert reject_reason(b"\xff\xff\xff\xff\x7f") == "malformed"


def test_http_request_rejected():
    # 'G' (0x47) reads as a 71-byte length, so a bare request line waits for more bytes;
    # once 71 bytes are in, the body fails to parse as a StreamOpen.
    request = b"GET / HTTP/1.1\r\n\r\n"
    r = tc.PreambleReader("open")
    assert r.feed(request) is None
    with pytest.raises(tc.PreambleError) as info:
        r.feed(b"Host: echo.default.svc\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n")
    assert info.value.reason == "malformed"


def test_http_request_rejected_by_client_side():
    request = b"GET / HTTP/1.1\r\nHost: echo.default.svc\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n"
    assert reject_reason(request, "reply") == "malformed"


@pytest.mark.parametrize("kind", ["open", "reply"])
def test_random_bytes_rejected(kind):
    rng = random.Random(15008)
    for _ in range(200):
        garbage = rng.randbytes(tc.MAX_PREAMBLE + 8)
        assert reject_reason(garbage, kind) == "malformed"


@pytest.mark.parametrize("change,words", [
    ({"service": ""}, "no service"), ({"port": 0}, "port 0"), ({"port": 65536}, "port 65536"),
    ({"target": pb.Address(ip=1, port=0)}, "target port 0"),
    ({"original_dst": pb.Address(ip=1, port=70000)}, "original_dst port 70000"),
])
def test_open_bad_content_is_malformed(change, words):
    with pytest.raises(tc.PreambleError) as info:
        tc.PreambleReader("open").feed(frame(open_pb(**change)))
    assert info.value.reason == "malformed"
    assert words in str(info.value)


@pytest.mark.parametrize("field", ["target", "original_dst"])
def test_open_missing_address_is_malformed(field):
    m = open_pb()
    m.ClearField(field)
    with pytest.raises(tc.PreambleError) as info:
        tc.PreambleReader("open").feed(frame(m))
    assert info.value.reason == "malformed"
    assert "lacks original_dst or target" in str(info.value)


def test_open_ip_becomes_dotted_string():
    m = open_pb(target=pb.Address(ip=0xC0A80001, port=80))
    assert tc.PreambleReader("open").feed(frame(m)).target == tc.Address("192.168.0.1", 80)


def test_open_wrong_version():
    with pytest.raises(tc.PreambleError) as info:
        tc.PreambleReader("open").feed(tc.encode_open(tc.Open(**{**OPEN.__dict__, "version": 2})))
    assert info.value.reason == "version"
    assert "2" in str(info.value)


def test_open_without_version_is_malformed():
    assert reject_reason(frame(open_pb(version=0))) == "malformed"


def test_accept_wrong_version():
    assert reject_reason(tc.encode_accept(tc.Accept(7, "t")), "reply") == "version"


def test_reply_with_neither_kind_is_malformed():
    assert reject_reason(b"\x02\x48\x01", "reply") == "malformed"  # only an unknown field 9


@pytest.mark.parametrize("reason", [0, 42])
def test_reject_with_unknown_reason_is_malformed(reason):
    data = frame(pb.Reply(reject=pb.StreamReject(reason=reason, detail="x")))
    assert reject_reason(data, "reply") == "malformed"


def test_reader_is_finished_after_error():
    r = tc.PreambleReader("open")
    with pytest.raises(tc.PreambleError):
        r.feed(b"\x00")
    with pytest.raises(RuntimeError):
        r.feed(tc.encode_open(OPEN))


def test_bad_kind():
    with pytest.raises(ValueError):
        tc.PreambleReader("stream")


# --- IPv6 addresses -----------------------------------------------------------------------

def test_ipv6_addresses_round_trip():
    o = tc.Open(1, "p", "i", "default/echo", 80, tc.Address("2001:2:0:ffff::c613:a", 80),
                tc.Address("2001:2::c612:107", 9090), "t", "n")
    assert tc.PreambleReader("open").feed(tc.encode_open(o)) == o
    mixed = tc.Open(1, "p", "i", "default/echo", 80, tc.Address("198.19.0.10", 80),
                    tc.Address("2001:2::c612:107", 9090), "t", "n")
    assert tc.PreambleReader("open").feed(tc.encode_open(mixed)) == mixed


def test_ipv6_address_is_sixteen_bytes_and_no_ipv4():
    o = tc.Open(1, "p", "i", "s", 80, tc.Address("198.19.0.10", 80), tc.Address("2001:2::c612:107", 90), "t", "n")
    m = pb.StreamOpen()
    m.ParseFromString(tc.encode_open(o)[1:])
    assert m.target.WhichOneof("family") == "ip6" and m.target.ip6 == bytes.fromhex("20010002" + "00" * 8 + "c6120107")
    assert m.target.ip == 0
    assert m.original_dst.WhichOneof("family") == "ip" and m.original_dst.ip == 0xC613000A


def _field(number, wire_type, payload: bytes) -> bytes:
    return varint(number << 3 | wire_type) + payload


def _old_address(ip: int, port: int) -> bytes:
    """An Address as peers wrote it before IPv6: uint32 ip = 1, uint32 port = 2, nothing else."""
    body = _field(1, 0, varint(ip)) + _field(2, 0, varint(port))
    return varint(len(body)) + body


def test_message_from_a_peer_before_ipv6_still_decodes():
    service = b"default/echo"
    body = (_field(1, 0, varint(1)) + _field(4, 2, varint(len(service)) + service) + _field(5, 0, varint(8080))
            + _field(6, 2, _old_address(0x0A60000C, 8080)) + _field(7, 2, _old_address(0x0AF40107, 9090)))
    o = tc.PreambleReader("open").feed(varint(len(body)) + body)
    assert (o.original_dst, o.target) == (tc.Address("10.96.0.12", 8080), tc.Address("10.244.1.7", 9090))


@pytest.mark.parametrize("size", [0, 4, 15, 17])
def test_ip6_of_the_wrong_size_is_malformed(size):
    with pytest.raises(tc.PreambleError) as info:
        tc.PreambleReader("open").feed(frame(open_pb(target=pb.Address(ip6=b"\1" * size, port=80))))
    assert info.value.reason == "malformed" and f"target ip6 is {size} bytes, not 16" in str(info.value)
