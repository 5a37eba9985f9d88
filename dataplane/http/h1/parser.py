"""The HTTP/1.1 parser state machine shared by both directions (RFC 9112), without I/O.

Parser holds the bytes fed to it and turns them into events on demand (next_event); the package
docstring states the contract (events, PAUSED, must_close, buffering, errors, strictness).
RequestParser and ResponseParser (request.py, response.py) add what differs by direction: the
first line, which transfer codings are allowed, what follows an upgrade, and error statuses.
"""
import re

from dataplane.http.h1.events import (NEED_DATA, PAUSED, ConnectionClosed, Data, EndOfMessage,
                                      HttpError)
from dataplane.http.h1.headers import TCHAR, TOKEN, get_all_headers

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD = 64 * 1024  # request or status line plus header fields, also the cap on trailers
MAX_HEADERS = 100
MAX_CHUNK_LINE = 4 * 1024  # chunk size plus extensions

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_FIELD = re.compile(rb"([%s]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)" % TCHAR)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(;[\t\x20-\x7e\x80-\xff]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE = range(7)
_DONE, _PAUSED, _MUST_CLOSE, _SWITCHED, _CLOSED, _ERROR = range(7, 13)


class Parser:
    """The state machine both directions share: heads, Content-Length, chunked and
    close-delimited bodies, trailers, keep-alive. A direction (RequestParser, ResponseParser)
    provides _start_message(line, headers) -> event, _transfer_codings(codings, version) ->
    (framing, None), _skip_leading_crlf, and the statuses of its errors (_error_status for
    framing, _line_status for a long first line, _limit_status for a large header section);
    it may override _after_message to pause or switch protocols."""

    _error_status = 400
    _line_status = 414

    def __init__(self, max_line=MAX_REQUEST_LINE, max_head=MAX_HEAD, max_headers=MAX_HEADERS,
                 max_chunk_line=MAX_CHUNK_LINE):
        self.max_line, self.max_head, self.max_headers = max_line, max_head, max_headers
        self.max_chunk_line = max_chunk_line
        self._buf = bytearray()
        self._eof = False
        self._state = _HEAD
        self._scan = 0  # how far the unfinished head (or trailer section) has been checked
        self._remaining = 0  # body bytes left (Content-Length) or chunk bytes left
        self._chunk_size = 0
        self._chunk_first = False
        self._close_after = False  # the current message ends the connection
        self._error = None
        self.must_close = False
        # How the body of the message being read is framed: "length" (Content-Length, or none:
        # length 0), "chunked" or "close" (until EOF); choose the BodyWriter by it.
        self.framing = None

    # -- feeding

    def receive_data(self, data) -> None:
        """Add bytes read from the peer; b"" means the peer has closed (EOF)."""
        if self._eof and data:
            raise RuntimeError("data received after EOF")
        if self._state == _SWITCHED:
            raise RuntimeError("the connection switched protocols: relay raw bytes instead")
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes held and not yet turned into events (diagnostics, flow control)."""
        return len(self._buf)

    def next_event(self):
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except HttpError as e:
            self._error = e
            self._state = _ERROR
            raise

    def _fail(self, reason, status=None):
        return HttpError(status or self._error_status, reason)

    # -- the state machine

    def _next(self):
        state = self._state
        buf = self._buf
        if state == _HEAD:
            return self._read_head()
        if state == _LENGTH:
            if self._remaining == 0:
                return self._end(())
            if not buf:
                return self._need("connection closed before the end of the body")
            data = self._take(self._remaining)
            self._remaining -= len(data)
            return Data(data)
        if state == _CHUNK_DATA:
            if not buf:
                return self._need("connection closed inside a chunk")
            data = self._take(self._remaining)
            self._remaining -= len(data)
            first, self._chunk_first = self._chunk_first, False
            end = self._remaining == 0
            if end:
                self._state = _CHUNK_CRLF
            return Data(data, self._chunk_size if first else None, end)
        if state == _CHUNK_CRLF:
            if len(buf) < 2:
                if buf[:1] not in (b"", b"\r"):
                    raise self._fail("chunk data not followed by CRLF")
                return self._need("connection closed inside a chunk")
            if buf[:2] != b"\r\n":
                raise self._fail("chunk data not followed by CRLF")
            del buf[:2]
            self._state = _CHUNK_SIZE
            return self._next()
        if state == _CHUNK_SIZE:
            return self._read_chunk_size()
        if state == _TRAILERS:
            return self._read_trailers()
        if state == _UNTIL_CLOSE:
            if buf:
                data = bytes(buf)
                buf.clear()
                return Data(data)
            if self._eof:
                return self._end(())
            return NEED_DATA
        if state == _DONE:
            return self._after_message()
        if state in (_PAUSED, _MUST_CLOSE):
            if state == _MUST_CLOSE and self._eof:
                self._state = _CLOSED
                return ConnectionClosed()
            return PAUSED
        if state == _CLOSED:
            return ConnectionClosed()
        if state == _SWITCHED:
            return PAUSED
        raise AssertionError(state)

    def _take(self, n):
        """Up to n bytes from the front of the buffer, copied once."""
        buf = self._buf
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
            return data
        with memoryview(buf) as view:
            data = bytes(view[:n])
        del buf[:n]
        return data

    def _need(self, truncated):
        if self._eof:
            raise self._fail(truncated)
        return NEED_DATA

    def _end(self, trailers):
        self._state = _DONE
        return EndOfMessage(trailers)

    def _after_message(self):  # subclasses decide between _HEAD, _PAUSED and _MUST_CLOSE
        if self._close_after:
            self.must_close = True
            self._state = _MUST_CLOSE
        else:
            self._read_next_head()
        return self._next()

    # -- transitions the directions ask for

    def _read_next_head(self):
        """Read a head next (after a message, or after a 1xx for the same request)."""
        self._state = _HEAD
        self._scan = 0

    def _pause(self):
        """Stop after this message until the caller decides (an upgrade request)."""
        self._state = _PAUSED
        return PAUSED

    def _is_paused(self) -> bool:
        return self._state == _PAUSED

    def _leave_http(self) -> bytes:
        """The connection switched protocols: finish, and hand back what was buffered."""
        self._state = _SWITCHED
        data = bytes(self._buf)
        self._buf.clear()
        return data

    # -- heads

    def _find_section_end(self, limit_status, first_line_limit):
        """Index of the CRLFCRLF ending the section at the start of the buffer, or -1."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
        stop = end if end >= 0 else len(buf)
        # Every LF must end a CRLF; checked as bytes arrive so that LF-only input fails at once.
        i = buf.find(b"\n", self._scan, stop)
        while i >= 0:
            if i == 0 or buf[i - 1] != 13:
                raise self._fail("line ending is a bare LF, not CRLF")
            i = buf.find(b"\n", i + 1, stop)
        if end < 0:
            self._scan = len(buf)
            if first_line_limit:
                first = buf.find(b"\r\n", 0, first_line_limit + 2)
                if first < 0 and len(buf) > first_line_limit:
                    raise self._fail("request line too long", self._line_status)
            if len(buf) > self.max_head + 4:
                raise self._fail("header section too large", limit_status)
            if self._eof:
                raise self._fail("connection closed inside the header section")
            return -1
        if end > self.max_head:
            raise self._fail("header section too large", limit_status)
        return end

    def _read_head(self):
        buf = self._buf
        if self._skip_leading_crlf:
            while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request
                del buf[:2]
            if buf == b"\r" and not self._eof:
                return NEED_DATA
        if not buf:
            if self._eof:
                self._state = _CLOSED
                return ConnectionClosed()
            return NEED_DATA
        end = self._find_section_end(self._limit_status, self.max_line)
        if end < 0:
            return NEED_DATA
        head = bytes(buf[:end])
        del buf[:end + 4]
        self._scan = 0
        lines = head.split(b"\r\n")
        if len(lines[0]) > self.max_line:
            raise self._fail("request line too long", self._line_status)
        headers = self._parse_fields(lines, 1, self._limit_status)
        return self._start_message(lines[0], headers)

    def _parse_fields(self, lines, start, limit_status):
        if len(lines) - start > self.max_headers:
            raise self._fail(f"more than {self.max_headers} header fields", limit_status)
        out = []
        match = _FIELD.fullmatch
        for line in lines[start:]:
            m = match(line)
            if m is None:
                raise self._fail(_field_problem(line))
            name = m.group(1)
            if b"_" in name and name.lower().replace(b"_", b"-") in _FRAMING:
                # Some servers read "_" as "-": refuse a second, disguised framing header.
                raise self._fail(f"header {name.decode('latin-1')} disguises a framing header")
            out.append((name, m.group(2).rstrip(b" \t")))
        return tuple(out)

    def _body_framing(self, headers, version):
        """("chunked", None), ("length", n) or (None, None): neither header is present."""
        te = get_all_headers(headers, b"transfer-encoding")
        cl = get_all_headers(headers, b"content-length")
        if te and cl:
            raise self._fail("both Transfer-Encoding and Content-Length (request smuggling?)")
        if te:
            codings = [c.split(b";")[0].strip(b" \t").lower() for v in te for c in v.split(b",")]
            codings = [c for c in codings if c]
            return self._transfer_codings(codings, version)
        if cl:
            values = {v.strip(b" \t") for value in cl for v in value.split(b",")}
            for v in values:
                if not _DIGITS.fullmatch(v):
                    raise self._fail(f"invalid Content-Length {v[:20]!r}")
            if len(values) != 1:
                raise self._fail("conflicting Content-Length values")
            return "length", int(values.pop())
        return None, None

    def _start_body(self, kind, length):
        self.framing = kind
        if kind == "chunked":
            self._state = _CHUNK_SIZE
        elif kind == "close":
            self._state = _UNTIL_CLOSE
            self._close_after = True
        else:
            self._state = _LENGTH
            self._remaining = length

    # -- chunked bodies

    def _read_chunk_size(self):
        buf = self._buf
        i = buf.find(b"\r\n", 0, self.max_chunk_line + 2)
        if i < 0:
            if len(buf) > self.max_chunk_line:
                raise self._fail("chunk size line too long")
            if b"\n" in buf:
                raise self._fail("chunk size line ends in a bare LF")
            return self._need("connection closed before a chunk size")
        line = bytes(buf[:i])
        del buf[:i + 2]
        m = _CHUNK_LINE.fullmatch(line)
        if m is None:
            raise self._fail(f"invalid chunk size line {line[:20]!r}")
        digits = m.group(1)
        if len(digits) > 16:
            raise self._fail("chunk size overflows 64 bits")
        size = int(digits, 16)
        if size == 0:
            self._state = _TRAILERS
            self._scan = 0
        else:
            self._chunk_size = self._remaining = size
            self._chunk_first = True
            self._state = _CHUNK_DATA
        return self._next()

    def _read_trailers(self):
        buf = self._buf
        if buf[:2] == b"\r\n":
            del buf[:2]
            return self._end(())
        if len(buf) < 2 and buf in (b"", b"\r"):
            return self._need("connection closed before the end of the chunked body")
        end = self._find_section_end(self._limit_status, 0)
        if end < 0:
            return NEED_DATA
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[:end + 4]
        self._scan = 0
        return self._end(self._parse_fields(lines, 0, self._limit_status))


def _field_problem(line):
    if line[:1] in (b" ", b"\t"):
        return "obs-fold (a header line starting with whitespace) is not allowed"
    if b"\r" in line or b"\n" in line:
        return "bare CR or LF in the header section"
    name, colon, _ = line.partition(b":")
    if not colon:
        return f"header line without a colon: {line[:20]!r}"
    if name != name.rstrip(b" \t"):
        return "whitespace between a header name and its colon"
    if not TOKEN.fullmatch(name):
        return f"invalid character in header name {name[:20]!r}"
    return f"invalid character in the value of {name[:40].decode('latin-1')}"
