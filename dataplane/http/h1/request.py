"""RequestParser: reads requests from a client (the server half of a client connection).

Errors carry 400, 414, 431, 501 or 505, the status to answer before closing. After a request
carrying Upgrade, or with method CONNECT, the parser stays PAUSED until the caller calls
switch_protocol() (the upstream switched) or resume() (it did not).
"""
import re

from dataplane.http.h1.events import Request
from dataplane.http.h1.headers import TOKEN, get_all_headers, keep_alive
from dataplane.http.h1.parser import Parser

# Transfer codings a request may carry before the final "chunked"; any other is answered 501.
KNOWN_CODINGS = frozenset({b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"})

_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")


class RequestParser(Parser):
    """Reads requests from a client. Errors carry 400, 414, 431, 501 or 505."""

    _skip_leading_crlf = True
    _limit_status = 431

    def __init__(self, **limits):
        super().__init__(**limits)
        self._upgrade = False

    def switch_protocol(self) -> bytes:
        """After an Upgrade or CONNECT request was accepted: finish and return buffered bytes."""
        if not self._is_paused():
            raise RuntimeError("switch_protocol() is only allowed while paused after an upgrade request")
        return self._leave_http()

    def resume(self) -> None:
        """After an Upgrade request was refused (the response was not 101): read on."""
        if not self._is_paused():
            raise RuntimeError("resume() is only allowed while paused after an upgrade request")
        self._read_next_head()

    def _after_message(self):
        if self._upgrade and not self._close_after:
            return self._pause()
        return super()._after_message()

    def _start_message(self, line, headers):
        parts = line.split(b" ")
        if len(parts) != 3:
            raise self._fail("request line is not METHOD SP TARGET SP VERSION")
        method, target, version = parts
        if not TOKEN.fullmatch(method):
            raise self._fail("invalid request method")
        if not _TARGET.fullmatch(target):
            raise self._fail("invalid request target")
        m = _VERSION.fullmatch(version)
        if m is None:
            raise self._fail("invalid HTTP version")
        if m.group(1) != b"1":
            raise self._fail("HTTP version not supported", 505)
        version = version[5:]
        hosts = get_all_headers(headers, b"host")
        if len(hosts) > 1:
            raise self._fail("more than one Host header")
        if not hosts and version != b"1.0":
            raise self._fail("HTTP/1.1 request without Host")
        kind, length = self._body_framing(headers, version)
        if kind is None:
            kind, length = "length", 0  # RFC 9112 6.3: a request without either has no body
        self._upgrade = method == b"CONNECT" or bool(get_all_headers(headers, b"upgrade"))
        self._close_after = not keep_alive(version, headers)
        self._start_body(kind, length)
        return Request(method, target, version, headers)

    def _transfer_codings(self, codings, version):
        if version == b"1.0":
            raise self._fail("Transfer-Encoding in an HTTP/1.0 request")
        if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
            raise self._fail("Transfer-Encoding does not end in a single chunked")
        for c in codings:
            if c not in KNOWN_CODINGS:
                raise self._fail(f"unknown transfer coding {c[:20]!r}", 501)
        return "chunked", None
