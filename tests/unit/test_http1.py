import dataclasses
import random

import pytest

from dataplane.http import h1 as h
from dataplane.http.h1 import NEED_DATA, PAUSED


def drain(parser, data=b"", eof=False, limit=10_000):
    """Feed data (and EOF), then collect events up to and including NEED_DATA, PAUSED or
    ConnectionClosed."""
    if data:
        parser.receive_data(data)
    if eof:
        parser.receive_data(b"")
    out = []
    for _ in range(limit):
        e = parser.next_event()
        out.append(e)
        if e is NEED_DATA or e is PAUSED or isinstance(e, (h.ConnectionClosed, h.Switched)):
            return out
    raise AssertionError("parser did not stop")


def merged(events):
    """Events with consecutive Data pieces joined and sentinels dropped: what does not depend on
    how the bytes were cut."""
    out = []
    for e in events:
        if e is NEED_DATA or e is PAUSED:
            continue
        if isinstance(e, h.Data) and out and isinstance(out[-1], h.Data):
            out[-1] = h.Data(out[-1].data + e.data)
        elif isinstance(e, h.Data):
            out.append(h.Data(e.data))
        else:
            out.append(e)
    return out


def feed_pieces(parser, data, cuts, eof=False):
    events = []
    prev = 0
    for cut in list(cuts) + [len(data)]:
        if cut > prev:
            events += drain(parser, data[prev:cut])
        prev = cut
    if eof:
        events += drain(parser, eof=True)
    return events


def error_of(data, parser=None, eof=False):
    parser = parser or h.RequestParser()
    with pytest.raises(h.HttpError) as info:
        drain(parser, data, eof=eof)
        drain(parser)  # errors in a body come on a later call
    return info.value.status


GET = b"GET /index.html?q=1 HTTP/1.1\r\nHost: web.local\r\nUser-Agent: t/1\r\n\r\n"
CHUNKED_POST = (b"POST /upload HTTP/1.1\r\nHost: web.local\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n1\r\n!\r\n0\r\nX-Checksum: 42\r\n\r\n")


# --- requests -----------------------------------------------------------------------------

def test_simple_get_keeps_header_case_and_order():
    events = drain(h.RequestParser(), GET)
    assert events == [
        h.Request(b"GET", b"/index.html?q=1", b"1.1", ((b"Host", b"web.local"), (b"User-Agent", b"t/1"))),
        h.EndOfMessage(()),
        NEED_DATA,
    ]
    assert events[0].get(b"user-agent") == b"t/1"
    assert events[0].keep_alive


def test_header_values_lose_surrounding_whitespace_only():
    req = drain(h.RequestParser(), b"GET / HTTP/1.1\r\nHost:   a  b \t\r\nX-Empty:\r\n\r\n")[0]
    assert req.headers == ((b"Host", b"a  b"), (b"X-Empty", b""))


def test_content_length_body_streams_as_it_arrives():
    p = h.RequestParser()
    head = b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
    assert drain(p, head + b"0123") == [
        h.Request(b"PUT", b"/x", b"1.1", ((b"Host", b"a"), (b"Content-Length", b"10"))),
        h.Data(b"0123"), NEED_DATA]
    assert p.buffered == 0
    assert drain(p, b"456") == [h.Data(b"456"), NEED_DATA]
    assert drain(p, b"789GET") == [h.Data(b"789"), h.EndOfMessage(()), NEED_DATA]
    assert p.buffered == 3  # the start of the next request stays buffered


def test_chunked_body_events_carry_chunk_boundaries_and_trailers():
    events = drain(h.RequestParser(), CHUNKED_POST)
    assert events[1:] == [
        h.Data(b"hello", 5, True),
        h.Data(b"abcdefghijklmnopqrstuvwxyz", 26, True),
        h.Data(b"!", 1, True),
        h.EndOfMessage(((b"X-Checksum", b"42"),)),
        NEED_DATA,
    ]


def test_chunk_extensions_are_accepted_and_dropped():
    data = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;name=value ; x=\"q\"\r\nabc\r\n0;last\r\n\r\n")
    assert merged(drain(h.RequestParser(), data))[1:] == [h.Data(b"abc"), h.EndOfMessage(())]


def test_chunked_fed_one_byte_at_a_time_reframes_to_the_same_bytes():
    body = CHUNKED_POST[CHUNKED_POST.index(b"\r\n\r\n") + 4:]
    p = h.RequestParser()
    events = feed_pieces(p, CHUNKED_POST, range(1, len(CHUNKED_POST)))
    data_events = [e for e in events if isinstance(e, h.Data)]
    assert len(data_events) == len(b"hello" + b"abcdefghijklmnopqrstuvwxyz" + b"!")  # streamed, byte by byte
    writer = h.BodyWriter(chunked=True)
    out = b"".join(writer.write(e) for e in events if isinstance(e, (h.Data, h.EndOfMessage)))
    assert out == body
    whole = drain(h.RequestParser(), CHUNKED_POST)
    writer = h.BodyWriter(chunked=True)
    assert b"".join(writer.write(e) for e in whole if isinstance(e, (h.Data, h.EndOfMessage))) == body


def test_random_fragmentation_yields_the_same_events():
    stream = (GET + CHUNKED_POST
              + b"PUT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
              + b"\r\nGET /last HTTP/1.0\r\n\r\n")
    expected = merged(drain(h.RequestParser(), stream))
    assert sum(isinstance(e, h.Request) for e in expected) == 4
    rng = random.Random(4)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(1, 40)))
        assert merged(feed_pieces(h.RequestParser(), stream, cuts)) == expected, cuts


def test_pipelined_requests_come_out_in_order():
    stream = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
              b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
              b"DELETE /c HTTP/1.1\r\nHost: x\r\n\r\n")
    events = drain(h.RequestParser(), stream)
    assert [type(e).__name__ for e in events] == [
        "Request", "EndOfMessage", "Request", "Data", "EndOfMessage", "Request", "EndOfMessage", "_Sentinel"]
    assert [e.target for e in events if isinstance(e, h.Request)] == [b"/a", b"/b", b"/c"]


def test_empty_lines_before_a_request_are_ignored():
    events = drain(h.RequestParser(), b"\r\n\r\n" + GET)
    assert events[0].target == b"/index.html?q=1"


def test_http10_request_without_keep_alive_ends_the_connection():
    p = h.RequestParser()
    events = drain(p, b"GET / HTTP/1.0\r\n\r\nGET /next HTTP/1.0\r\n\r\n")
    assert events[0].version == b"1.0" and not events[0].keep_alive
    assert events[1:] == [h.EndOfMessage(()), PAUSED]
    assert p.must_close
    assert drain(p, eof=True) == [h.ConnectionClosed()]


def test_http10_keep_alive_and_http11_close():
    p = h.RequestParser()
    events = drain(p, b"GET /1 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
                      b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert [e.target for e in events if isinstance(e, h.Request)] == [b"/1", b"/2"]
    assert events[-1] is PAUSED and p.must_close


def test_eof_between_requests_is_connection_closed():
    p = h.RequestParser()
    assert drain(p, GET, eof=True)[-1] == h.ConnectionClosed()


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\n",  # inside the header section
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",  # inside a body
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",  # inside a chunk
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",  # before the trailers end
])
def test_eof_inside_a_request_is_an_error(data):
    assert error_of(data, eof=True) == 400


def test_errors_stick():
    p = h.RequestParser()
    with pytest.raises(h.HttpError):
        drain(p, b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
    with pytest.raises(h.HttpError) as info:
        p.next_event()
    assert info.value.status == 400 and "colon" in info.value.reason


# --- bad requests: each mapped to its status --------------------------------------------------

R = b"POST / HTTP/1.1\r\nHost: a\r\n"
BAD_REQUESTS = [
    # smuggling: both framings, in either order, whatever their values
    ("cl and te", R + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te and cl", R + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 400),
    ("te and cl, case", R + b"transfer-encoding: CHUNKED\r\ncontent-length: 3\r\n\r\n", 400),
    ("chunked not last", R + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("te without chunked", R + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("chunked twice", R + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te empty", R + b"Transfer-Encoding: \r\n\r\n", 400),
    ("te in 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te xchunked", R + b"Transfer-Encoding: xchunked\r\n\r\n", 400),
    ("te vertical tab", R + b"Transfer-Encoding: \x0bchunked\r\n\r\n", 400),
    ("te folded", R + b"Content-Length: 3\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
    ("te underscore", R + b"Content-Length: 3\r\nTransfer_Encoding: chunked\r\n\r\nabc", 400),
    ("cl underscore", R + b"Content_Length: 3\r\n\r\nabc", 400),
    ("unknown coding", R + b"Transfer-Encoding: rot13, chunked\r\n\r\n", 501),
    ("cl conflict", R + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    ("cl list conflict", R + b"Content-Length: 5, 6\r\n\r\n", 400),
    ("cl sign", R + b"Content-Length: +5\r\n\r\n", 400),
    ("cl negative", R + b"Content-Length: -1\r\n\r\n", 400),
    ("cl hex", R + b"Content-Length: 0x10\r\n\r\n", 400),
    ("cl inner space", R + b"Content-Length: 1 0\r\n\r\n", 400),
    ("cl empty", R + b"Content-Length:\r\n\r\n", 400),
    ("cl too big", R + b"Content-Length: 1234567890123456789\r\n\r\n", 400),
    # header syntax
    ("obs-fold", R + b"X-A: one\r\n two\r\n\r\n", 400),
    ("obs-fold tab", R + b"X-A: one\r\n\ttwo\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("tab before colon", b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400),
    ("no colon", R + b"NoColonHere\r\n\r\n", 400),
    ("empty name", R + b": value\r\n\r\n", 400),
    ("bad name char", R + b"X(A): 1\r\n\r\n", 400),
    ("bare cr in value", R + b"X-A: a\rb\r\n\r\n", 400),
    ("nul in value", R + b"X-A: a\x00b\r\n\r\n", 400),
    ("bare lf ending", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare lf in headers", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    ("whitespace before first header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
    # request line
    ("bad method char", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("missing version", b"GET /\r\nHost: a\r\n\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("control in target", b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("bare cr in request line", b"GET /a\r HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    ("garbage version", b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400),
    ("http/2", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("http/0.9", b"GET / HTTP/0.9\r\n\r\n", 505),
    ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    # Host (RFC 9112 3.2)
    ("no host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # limits
    ("long request line", b"GET /" + b"a" * 8200 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ("too many headers", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n", 431),
    ("header section too large", b"GET / HTTP/1.1\r\nHost: a\r\n" + (b"X-A: " + b"v" * 1000 + b"\r\n") * 66 + b"\r\n", 431),
    # chunked framing
    ("bad chunk size", R + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("negative chunk size", R + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
    ("chunk size overflow", R + b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\n", 400),
    ("chunk line too long", R + b"Transfer-Encoding: chunked\r\n\r\n1;" + b"x" * 5000, 400),
    ("chunk without crlf", R + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n", 400),
    ("chunk size bare lf", R + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n", 400),
    ("bad trailer", R + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX : 1\r\n\r\n", 400),
]


@pytest.mark.parametrize("data,status", [(d, s) for _, d, s in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS])
def test_bad_request_gets_its_status(data, status):
    assert error_of(data) == status


@pytest.mark.parametrize("data,status", [(d, s) for _, d, s in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS])
def test_bad_request_fails_the_same_when_fed_byte_by_byte(data, status):
    p = h.RequestParser()
    with pytest.raises(h.HttpError) as info:
        feed_pieces(p, data, range(1, len(data)))
    assert info.value.status == status


def test_identical_duplicate_content_length_is_accepted():
    events = drain(h.RequestParser(), R + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc")
    assert merged(events)[1:] == [h.Data(b"abc"), h.EndOfMessage(())]


def test_known_coding_before_chunked_is_accepted():
    events = drain(h.RequestParser(), R + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    assert events[1:] == [h.EndOfMessage(()), NEED_DATA]


def test_limits_are_exact():
    line = b"GET /" + b"a" * (8192 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(line) == 8192
    assert isinstance(drain(h.RequestParser(), line + b"\r\nHost: a\r\n\r\n")[0], h.Request)
    assert error_of(line[:5] + b"a" + line[5:] + b"\r\nHost: a\r\n\r\n") == 414
    ok = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: 1\r\n" * 99 + b"\r\n"
    assert len(drain(h.RequestParser(), ok)[0].headers) == 100


def test_header_section_that_never_ends_trips_431_with_bounded_buffer():
    p = h.RequestParser()
    p.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n")
    line = b"X-Drip: " + b"d" * 1000 + b"\r\n"
    fed = 0
    with pytest.raises(h.HttpError) as info:
        while True:
            assert p.next_event() is NEED_DATA
            assert p.buffered <= h.MAX_HEAD + 4 + len(line)
            p.receive_data(line)
            fed += len(line)
            assert fed < 2 * h.MAX_HEAD, "limit never tripped"
    assert info.value.status == 431
    assert fed <= h.MAX_HEAD + len(line)


def test_request_line_that_never_ends_trips_414_early():
    p = h.RequestParser()
    p.receive_data(b"GET /")
    fed = 5
    with pytest.raises(h.HttpError) as info:
        while True:
            assert p.next_event() is NEED_DATA
            p.receive_data(b"a" * 512)
            fed += 512
            assert fed < 4 * h.MAX_REQUEST_LINE, "limit never tripped"
    assert info.value.status == 414
    assert fed <= h.MAX_REQUEST_LINE + 512


def test_lf_only_client_fails_on_its_first_line():
    p = h.RequestParser()
    with pytest.raises(h.HttpError) as info:
        drain(p, b"GET / HTTP/1.1\n")
    assert info.value.status == 400


def test_custom_limits():
    p = h.RequestParser(max_headers=2)
    assert error_of(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", p) == 431


# --- upgrade and CONNECT ----------------------------------------------------------------------

WS_REQUEST = (b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def test_websocket_upgrade_switches_both_halves_to_opaque():
    req = h.RequestParser()
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked "Hello" sent early
    events = drain(req, WS_REQUEST + frame)
    assert [type(e) for e in events[:2]] == [h.Request, h.EndOfMessage]
    assert events[2] is PAUSED
    assert req.next_event() is PAUSED  # stays paused: only the response decides
    resp = h.ResponseParser()
    resp.expect(b"GET")
    server_frame = b"\x81\x05Hello"
    events = drain(resp, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n" + server_frame)
    assert events[0].status == 101
    assert events[1:] == [h.EndOfMessage(()), h.Switched(server_frame)]
    assert req.switch_protocol() == frame
    with pytest.raises(RuntimeError):
        resp.receive_data(b"more")
    with pytest.raises(RuntimeError):
        req.receive_data(b"more")


def test_refused_upgrade_resumes_http():
    req = h.RequestParser()
    events = drain(req, WS_REQUEST + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert events[-1] is PAUSED
    resp = h.ResponseParser()
    resp.expect(b"GET")
    events = drain(resp, b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
    assert merged(events)[1:] == [h.Data(b"no"), h.EndOfMessage(())]
    req.resume()
    assert drain(req)[0].target == b"/next"


def test_connect_tunnel():
    req = h.RequestParser()
    events = drain(req, b"CONNECT db.local:5432 HTTP/1.1\r\nHost: db.local:5432\r\n\r\n\x00\x00\x00\x08")
    assert events[0].target == b"db.local:5432" and events[1:] == [h.EndOfMessage(()), PAUSED]
    resp = h.ResponseParser()
    resp.expect(b"CONNECT")
    events = drain(resp, b"HTTP/1.1 200 Connection established\r\n\r\nN")
    assert events[1:] == [h.EndOfMessage(()), h.Switched(b"N")]
    assert req.switch_protocol() == b"\x00\x00\x00\x08"


def test_refused_connect_has_a_body():
    resp = h.ResponseParser()
    resp.expect(b"CONNECT")
    events = drain(resp, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
    assert merged(events)[1:] == [h.Data(b"nope"), h.EndOfMessage(())]


def test_switch_protocol_only_when_paused():
    req = h.RequestParser()
    drain(req, GET)
    with pytest.raises(RuntimeError):
        req.switch_protocol()
    with pytest.raises(RuntimeError):
        req.resume()


# --- responses -----------------------------------------------------------------------------

def response_parser(*methods):
    p = h.ResponseParser()
    for m in methods:
        p.expect(m)
    return p


def test_response_with_length():
    events = drain(response_parser(b"GET"), b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello")
    assert events == [h.Response(200, b"OK", b"1.1", ((b"Content-Length", b"5"), (b"Server", b"x"))),
                      h.Data(b"hello"), h.EndOfMessage(()), NEED_DATA]


def test_response_to_head_has_no_body_despite_content_length():
    p = response_parser(b"HEAD", b"GET")
    events = drain(p, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [type(e) for e in events] == [h.Response, h.EndOfMessage, h.Response, h.Data, h.EndOfMessage,
                                         type(NEED_DATA)]
    assert events[3] == h.Data(b"ok")
    assert p.pending == 0


def test_response_to_head_with_chunked_header_has_no_body():
    events = drain(response_parser(b"HEAD"), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert events[1:] == [h.EndOfMessage(()), NEED_DATA]


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status):
    events = drain(response_parser(b"GET"), b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
    assert events[1:] == [h.EndOfMessage(()), NEED_DATA]


def test_informational_responses_precede_the_final_one():
    p = response_parser(b"POST")
    events = drain(p, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                      b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert events == [
        h.InformationalResponse(100, b"Continue", b"1.1", ()),
        h.InformationalResponse(103, b"Early Hints", b"1.1", ((b"Link", b"</s.css>"),)),
        h.Response(201, b"Created", b"1.1", ((b"Content-Length", b"0"),)),
        h.EndOfMessage(()), NEED_DATA]


def test_response_without_length_reads_until_close():
    p = response_parser(b"GET")
    assert drain(p, b"HTTP/1.1 200 OK\r\n\r\nsome") == [h.Response(200, b"OK", b"1.1", ()), h.Data(b"some"), NEED_DATA]
    assert drain(p, b" more") == [h.Data(b" more"), NEED_DATA]
    assert drain(p, eof=True) == [h.EndOfMessage(()), h.ConnectionClosed()]
    assert p.must_close


def test_unknown_transfer_coding_in_response_reads_until_close():
    p = response_parser(b"GET")
    events = drain(p, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", eof=True)
    assert merged(events)[1:] == [h.Data(b"zz"), h.EndOfMessage(()), h.ConnectionClosed()]


def test_status_line_without_reason():
    events = drain(response_parser(b"GET"), b"HTTP/1.1 204\r\n\r\n")
    assert events[0] == h.Response(204, b"", b"1.1", ())


def test_http10_response_ends_the_connection():
    p = response_parser(b"GET", b"GET")
    events = drain(p, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert events[-1] is PAUSED and p.must_close


def test_keep_alive_response_lets_the_next_one_follow():
    p = response_parser(b"GET", b"GET")
    events = drain(p, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na" b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nb")
    assert [e.status for e in events if isinstance(e, h.Response)] == [200, 404]
    assert not p.must_close


def test_long_poll_response_streams_each_chunk_as_it_arrives():
    p = response_parser(b"GET")
    assert drain(p, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")[1:] \
        == [NEED_DATA]
    writer = h.BodyWriter(chunked=True)
    for i in range(300):
        msg = b"data: %d\n\n" % i
        chunk = b"%x\r\n%s\r\n" % (len(msg), msg)
        events = drain(p, chunk)
        assert events == [h.Data(msg, len(msg), True), NEED_DATA]
        assert writer.write(events[0]) == chunk
        assert p.buffered == 0
    assert drain(p, b"0\r\n\r\n") == [h.EndOfMessage(()), NEED_DATA]


BAD_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
    b"ICY 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # truncated by EOF
    b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
]


@pytest.mark.parametrize("data", BAD_RESPONSES)
def test_bad_responses_are_502(data):
    assert error_of(data, response_parser(b"GET"), eof=True) == 502


# --- writing -------------------------------------------------------------------------------

def test_write_head_round_trips_a_request_and_applies_rewrites():
    req = drain(h.RequestParser(), GET)[0]
    assert h.write_head(req) == GET
    changed = dataclasses.replace(req, headers=req.headers + ((b"X-Added", b"1"),))
    again = drain(h.RequestParser(), h.write_head(changed))[0]
    assert again.headers == changed.headers


def test_write_head_sends_our_version():
    req = drain(h.RequestParser(), b"GET / HTTP/1.0\r\n\r\n")[0]
    assert h.write_head(req).startswith(b"GET / HTTP/1.1\r\n")
    assert h.write_head(req, version=b"1.0").startswith(b"GET / HTTP/1.0\r\n")


def test_write_head_response():
    resp = h.Response(503, b"Service Unavailable", b"1.1", ((b"Content-Length", b"0"),))
    assert h.write_head(resp) == b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("header", [(b"X-A", b"a\r\nX-Injected: 1"), (b"X-A", b"a\nb"), (b"X A", b"1"), (b"X-A", b"\0")])
def test_write_head_refuses_header_injection(header):
    with pytest.raises(ValueError):
        h.write_head(h.Request(b"GET", b"/", b"1.1", ((b"Host", b"a"), header)))


def test_body_writer_chunks_a_length_body():
    w = h.BodyWriter(chunked=True)
    assert w.write(h.Data(b"abc")) == b"3\r\nabc\r\n"
    assert w.write(h.Data(b"")) == b""  # an empty chunk would end the body
    assert w.write(h.EndOfMessage(((b"X-T", b"1"),))) == b"0\r\nX-T: 1\r\n\r\n"


def test_body_writer_unchunks_for_a_length_or_close_body():
    events = drain(h.RequestParser(), CHUNKED_POST)
    w = h.BodyWriter(chunked=False)
    out = b"".join(w.write(e) for e in events if isinstance(e, (h.Data, h.EndOfMessage)))
    assert out == b"hello" + b"abcdefghijklmnopqrstuvwxyz" + b"!"


def test_body_writer_refuses_end_inside_a_chunk():
    w = h.BodyWriter(chunked=True)
    w.write(h.Data(b"ab", 4, False))
    with pytest.raises(RuntimeError):
        w.write(h.EndOfMessage())


def test_strip_hop_by_hop():
    headers = ((b"Host", b"a"), (b"Connection", b"keep-alive, X-Secret"), (b"Keep-Alive", b"timeout=5"),
               (b"X-Secret", b"1"), (b"TE", b"trailers"), (b"Transfer-Encoding", b"chunked"),
               (b"Proxy-Connection", b"x"), (b"Upgrade", b"websocket"))
    assert h.strip_hop_by_hop(headers) == ((b"Host", b"a"), (b"Transfer-Encoding", b"chunked"))
    assert h.strip_hop_by_hop(headers, keep_upgrade=True) == (
        (b"Host", b"a"), (b"Transfer-Encoding", b"chunked"), (b"Upgrade", b"websocket"), (b"Connection", b"upgrade"))


def test_header_helpers():
    headers = ((b"Connection", b"close, Upgrade"), (b"connection", b" x ,"), (b"A", b"1"), (b"a", b"2"))
    assert h.header_tokens(headers, b"connection") == [b"close", b"upgrade", b"x"]
    assert h.get_all_headers(headers, b"a") == [b"1", b"2"]
    assert h.get_header(headers, b"missing", b"d") == b"d"


@pytest.mark.parametrize("parser,data,framing", [
    (h.RequestParser, GET, "length"),
    (h.RequestParser, CHUNKED_POST, "chunked"),
    (h.RequestParser, R + b"Content-Length: 2\r\n\r\nab", "length"),
    (lambda: response_parser(b"GET"), b"HTTP/1.1 200 OK\r\n\r\n", "close"),
    (lambda: response_parser(b"GET"), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "chunked"),
    (lambda: response_parser(b"HEAD"), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "length"),
])
def test_framing_tells_which_body_writer_to_use(parser, data, framing):
    p = parser()
    assert p.framing is None
    p.receive_data(data)
    p.next_event()
    assert p.framing == framing


def test_random_fragmentation_of_responses_yields_the_same_events():
    methods = [b"GET", b"HEAD", b"POST", b"GET", b"GET"]
    stream = (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
              b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n"  # HEAD: no body
              b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: t\r\n\r\n"
              b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"
              b"HTTP/1.1 200 OK\r\n\r\nuntil the end")

    def parse(cuts):
        return merged(feed_pieces(response_parser(*methods), stream, cuts, eof=True))

    expected = parse([])
    assert [type(e).__name__ for e in expected] == [
        "Response", "Data", "EndOfMessage", "Response", "EndOfMessage", "InformationalResponse", "Response",
        "Data", "EndOfMessage", "Response", "EndOfMessage", "Response", "Data", "EndOfMessage", "ConnectionClosed"]
    rng = random.Random(11)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(1, 50)))
        assert parse(cuts) == expected, cuts
