"""ResponseParser: reads responses from an upstream.

Call expect(method) once per request sent, in order: HEAD and CONNECT change how a response is
framed. Errors always carry 502, the answer owed to the downstream client. After a 101 (or a
2xx to CONNECT) the parser produces the Response, an EndOfMessage and then Switched(data).
"""
import re

from dataplane.http.h1.events import InformationalResponse, Response, Switched
from dataplane.http.h1.headers import keep_alive
from dataplane.http.h1.parser import Parser

_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")


class ResponseParser(Parser):
    """Reads responses from an upstream. Call expect(method) for each request sent, in order.
    Errors carry 502."""

    _skip_leading_crlf = False
    _error_status = 502
    _line_status = 502
    _limit_status = 502

    def __init__(self, **limits):
        super().__init__(**limits)
        self._methods = []
        self._switch = False

    def expect(self, method: bytes) -> None:
        """Queue the method of a request written to the upstream (pipelining keeps order)."""
        self._methods.append(method)

    @property
    def pending(self) -> int:
        """Requests sent whose final response has not yet started."""
        return len(self._methods)

    def _after_message(self):
        if self._switch:
            return Switched(self._leave_http())
        return super()._after_message()

    def _start_message(self, line, headers):
        m = _STATUS_LINE.fullmatch(line)
        if m is None:
            raise self._fail(f"invalid status line {line[:40]!r}")
        if m.group(1) != b"1":
            raise self._fail("upstream HTTP version not 1.x")
        version = line[5:8]
        status = int(m.group(3))
        reason = m.group(4) or b""
        if status < 100:
            raise self._fail(f"invalid status {status}")
        if 100 <= status < 200 and status != 101:
            self._read_next_head()  # the final response follows for the same request
            return InformationalResponse(status, reason, version, headers)
        method = self._methods.pop(0) if self._methods else b"GET"
        self._close_after = not keep_alive(version, headers)
        self._switch = status == 101 or (method == b"CONNECT" and 200 <= status < 300)
        if self._switch or method == b"HEAD" or status in (204, 304):
            self._start_body("length", 0)
        else:
            kind, length = self._body_framing(headers, version)
            self._start_body(kind or "close", length)
        return Response(status, reason, version, headers)

    def _transfer_codings(self, codings, version):
        # RFC 9112 6.3: chunked last frames the body; otherwise it is read until the close.
        if version == b"1.0":
            raise self._fail("Transfer-Encoding in an HTTP/1.0 response")
        if codings and codings[-1] == b"chunked" and codings.count(b"chunked") == 1:
            return "chunked", None
        if b"chunked" in codings:
            raise self._fail("chunked is not the last transfer coding")
        return "close", None
