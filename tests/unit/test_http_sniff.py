import pytest

from dataplane.http.sniff import HTTP, MAX_SNIFF, NEED_MORE, OPAQUE, SNIFF_DEADLINE, sniff


@pytest.mark.parametrize("request_line", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /api/v1/orders?x=1 HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"CONNECT db.local:5432 HTTP/1.1\r\n",
    b"GET http://web.local/x HTTP/1.0\r\n",
    b"PROPFIND /dav HTTP/1.1\r\n",
    b"M-SEARCH * HTTP/1.1\r\n",
])
def test_http_request_lines(request_line):
    assert sniff(request_line) == HTTP


def test_http_is_decided_once_the_version_prefix_is_in():
    line = b"GET /index.html HTTP/1.1\r\n"
    cut = line.index(b"HTTP/1.") + len(b"HTTP/1.")
    for i in range(1, cut):
        assert sniff(line[:i]) == NEED_MORE, line[:i]
    assert sniff(line[:cut]) == HTTP


@pytest.mark.parametrize("first", [
    b"\x16\x03\x01\x02\x00",  # TLS ClientHello
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
    b"*1\r\n$4\r\nPING\r\n",  # Redis RESP
    b"get key\r\n",  # memcached, lowercase
    b"\r\n",
    b" GET / HTTP/1.1",
    b"SSH-2.0-OpenSSH_9.6\r\n",  # '-'... then '.'
])
def test_opaque_clients(first):
    assert sniff(first) == OPAQUE


def test_first_byte_not_uppercase_is_opaque_after_one_byte():
    for b in range(256):
        expected = NEED_MORE if ord("A") <= b <= ord("Z") else OPAQUE
        assert sniff(bytes([b])) == expected, b


@pytest.mark.parametrize("data", [
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 prior knowledge
    b"PRI ",
    b"PING\r\n",  # Redis inline
    b"SET key value\r\n",  # Redis inline: no HTTP version
    b"EHLO mail.local\r\n",
    b"GET  / HTTP/1.1\r\n",  # two spaces
    b"GET /a\x00b HTTP/1.1",
    b"GET / HTTP/2.0\r\n",
    b"GET / FTP/1.1",
    b"GeT / HTTP/1.1\r\n",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1",  # no method is that long
])
def test_opaque_when_the_request_line_grammar_breaks(data):
    assert sniff(data) == OPAQUE


@pytest.mark.parametrize("data", [b"", b"G", b"GE", b"GET", b"GET ", b"GET /", b"GET /x ", b"GET /x HTTP/", b"PRI"])
def test_need_more(data):
    assert sniff(data) == NEED_MORE


def test_a_target_longer_than_max_sniff_stops_waiting():
    assert sniff(b"GET /" + b"a" * 100) == NEED_MORE
    assert sniff(b"GET /" + b"a" * MAX_SNIFF) == OPAQUE


def test_recommended_deadline_is_short():
    assert 0 < SNIFF_DEADLINE <= 0.5
