"""HTTP/1.1 message framing for one direction of a connection (RFC 9112), without I/O.

Modelled on python-hyper/h11: a parser is fed bytes with receive_data() (b"" means the peer
closed its sending side) and hands back events from next_event(); write_head() and BodyWriter
turn events back into bytes. Nothing here reads a clock or touches a socket: read deadlines,
connection pools and the relay belong to the forwarder.

    RequestParser   reads requests from a client (the server half of a client connection)
    ResponseParser  reads responses from an upstream; expect(method) once per request sent,
                    in order, because HEAD and CONNECT change how a response is framed

Events, in the order a parser produces them for one message:

    Request | Response      the head; headers keep their original order and case
    InformationalResponse   zero or more 1xx (not 101) before a Response, responses only
    Data                    zero or more body pieces, any slice of the body as it arrived
    EndOfMessage            the end, with trailers (chunked bodies only)

and the sentinels NEED_DATA (feed more bytes) and PAUSED (the parser will not go on by itself:
see below). ConnectionClosed comes when the peer closes between messages.

Bodies are streamed: a Data event carries what was buffered, never the whole body. For a chunked
body, Data.chunk_size is set on the first piece of each chunk (the chunk's full size) and
Data.chunk_end on its last piece, so BodyWriter can pass chunks through with their original
boundaries while streaming the bytes.

Upgrade and CONNECT. A request carrying Upgrade, or with method CONNECT, leaves RequestParser
PAUSED after its EndOfMessage, since only the response decides what follows. The caller then
calls switch_protocol() (the upstream answered 101, or 2xx to CONNECT), which finishes the parser
and returns the bytes it had buffered past the request, or resume() to read the next request.
ResponseParser decides by itself: after a 101 (or a 2xx to CONNECT) it produces the Response,
an EndOfMessage and then Switched(data), whose data are the bytes that followed the head; from
there on both directions are opaque and the forwarder relays raw bytes.

Keep-alive. After a message that ends the connection (HTTP/1.0 without keep-alive,
"Connection: close", or a response delimited by the close of the connection) the parser stays
PAUSED and must_close is true; it produces ConnectionClosed once the peer's EOF is fed.

Buffering. A parser holds only what it was fed and has not yet returned, and bounds that only
while a head is incomplete. While PAUSED, or while the caller has not asked for the next event,
it keeps whatever is fed: the caller stops reading the socket (back-pressure) rather than feed
a paused parser; `buffered` says how much is held.

Errors are exceptions: next_event() raises HttpError(status, reason), where status is what the
forwarder answers (RequestParser: 400, 414, 431, 501 or 505; ResponseParser: always 502, the
answer owed to the downstream client), and the connection must then be closed. The parser stays
broken: further next_event() calls raise the same error.

Strictness, beyond the RFC's MUSTs: a request with both Content-Length and Transfer-Encoding is
refused (400, RFC 9112 6.1 allows it), as is a response with both (502); bare LF line endings
are refused (RFC 9112 2.2 allows accepting them); obs-fold and whitespace before the colon are
refused. Limits trip as soon as the unfinished request line or header section outgrows them, so
a header section that never ends costs at most max_head bytes; slow drips are the caller's to
time out.
"""

import re
from dataclasses import dataclass

__all__ = [
    "Request", "Response", "InformationalResponse", "Data", "EndOfMessage", "ConnectionClosed",
    "Switched", "NEED_DATA", "PAUSED", "HttpError", "RequestParser", "ResponseParser",
    "write_head", "BodyWriter", "strip_hop_by_hop", "get_header", "get_all_headers",
    "header_tokens",
]

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD = 64 * 1024  # request or status line plus header fields, also the cap on trailers
MAX_HEADERS = 100
MAX_CHUNK_LINE = 4 * 1024  # chunk size plus extensions

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Transfer codings a request may carry before the final "chunked"; any other is answered 501.
KNOWN_CODINGS = frozenset({b"chunked", b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"})
# Connection-specific fields (RFC 9110 7.6.1) that a proxy does not forward.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"
_TOKEN = re.compile(rb"[%s]+" % _TCHAR)
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_FIELD = re.compile(rb"([%s]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)" % _TCHAR)
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(;[\t\x20-\x7e\x80-\xff]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")


# --- events ---------------------------------------------------------------------------------


def get_all_headers(headers, name: bytes) -> list:
    """Every value of the field called name (lowercase bytes), in order."""
    return [v for n, v in headers if n.lower() == name]


def get_header(headers, name: bytes, default=None):
    """The first value of the field called name (lowercase bytes), or default."""
    for n, v in headers:
        if n.lower() == name:
            return v
    return default


def header_tokens(headers, name: bytes) -> list:
    """The lowercased comma-separated elements of every field called name (Connection, TE...)."""
    out = []
    for v in get_all_headers(headers, name):
        for item in v.split(b","):
            item = item.strip(b" \t").lower()
            if item:
                out.append(item)
    return out


def _keep_alive(version, headers):
    tokens = header_tokens(headers, b"connection")
    if b"close" in tokens:
        return False
    if version == b"1.0":
        return b"keep-alive" in tokens
    return True


class _Head:
    def get(self, name: bytes, default=None):
        return get_header(self.headers, name, default)

    def get_all(self, name: bytes) -> list:
        return get_all_headers(self.headers, name)

    @property
    def keep_alive(self) -> bool:
        """Whether the sender allows another message on this connection after this one."""
        return _keep_alive(self.version, self.headers)


@dataclass(frozen=True)
class Request(_Head):
    method: bytes  # b"GET"; case kept (methods are case-sensitive)
    target: bytes  # as sent: origin-form "/a?b", absolute-form, authority-form or "*"
    version: bytes  # b"1.1" or b"1.0" (a 1.x above 1 is kept as sent and treated as 1.1)
    headers: tuple  # ((name, value), ...) as bytes, original case and order, OWS stripped


@dataclass(frozen=True)
class Response(_Head):
    status: int
    reason: bytes
    version: bytes
    headers: tuple


@dataclass(frozen=True)
class InformationalResponse(_Head):
    """A 1xx other than 101 (100 Continue, 103 Early Hints); the final Response follows."""
    status: int
    reason: bytes
    version: bytes
    headers: tuple


@dataclass(frozen=True)
class Data:
    data: bytes
    chunk_size: int = None  # chunked bodies: the chunk's full size, on its first piece only
    chunk_end: bool = False  # chunked bodies: this piece ends its chunk


@dataclass(frozen=True)
class EndOfMessage:
    trailers: tuple = ()


@dataclass(frozen=True)
class ConnectionClosed:
    pass


@dataclass(frozen=True)
class Switched:
    """The connection left HTTP (101 Switching Protocols, or a 2xx to CONNECT). data holds the
    bytes the upstream sent after the response head; relay them, then relay raw."""
    data: bytes


class _Sentinel:
    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
PAUSED = _Sentinel("PAUSED")


class HttpError(Exception):
    """The peer broke HTTP/1.1 framing. status is the status to answer with (then close)."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


# --- parsing --------------------------------------------------------------------------------

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE = range(7)
_DONE, _PAUSED, _MUST_CLOSE, _SWITCHED, _CLOSED, _ERROR = range(7, 13)


class _Parser:
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
            self._state = _HEAD
            self._scan = 0
        return self._next()

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
    if not _TOKEN.fullmatch(name):
        return f"invalid character in header name {name[:20]!r}"
    return f"invalid character in the value of {name[:40].decode('latin-1')}"


class RequestParser(_Parser):
    """Reads requests from a client. Errors carry 400, 414, 431, 501 or 505."""

    _skip_leading_crlf = True
    _limit_status = 431

    def __init__(self, **limits):
        super().__init__(**limits)
        self._upgrade = False

    def switch_protocol(self) -> bytes:
        """After an Upgrade or CONNECT request was accepted: finish and return buffered bytes."""
        if self._state != _PAUSED:
            raise RuntimeError("switch_protocol() is only allowed while paused after an upgrade request")
        self._state = _SWITCHED
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def resume(self) -> None:
        """After an Upgrade request was refused (the response was not 101): read on."""
        if self._state != _PAUSED:
            raise RuntimeError("resume() is only allowed while paused after an upgrade request")
        self._state = _HEAD
        self._scan = 0

    def _after_message(self):
        if self._upgrade and not self._close_after:
            self._state = _PAUSED
            return PAUSED
        return super()._after_message()

    def _start_message(self, line, headers):
        parts = line.split(b" ")
        if len(parts) != 3:
            raise self._fail("request line is not METHOD SP TARGET SP VERSION")
        method, target, version = parts
        if not _TOKEN.fullmatch(method):
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
        self._close_after = not _keep_alive(version, headers)
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


class ResponseParser(_Parser):
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
            self._state = _SWITCHED
            data = bytes(self._buf)
            self._buf.clear()
            return Switched(data)
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
            self._state = _HEAD  # the final response follows for the same request
            self._scan = 0
            return InformationalResponse(status, reason, version, headers)
        method = self._methods.pop(0) if self._methods else b"GET"
        self._close_after = not _keep_alive(version, headers)
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


# --- writing --------------------------------------------------------------------------------


def write_head(event, version: bytes = b"1.1") -> bytes:
    """The request or status line and header fields of event, ready to send.

    Apply header rewrites first (dataclasses.replace(event, headers=...)). The version written is
    ours (RFC 9110 6.2: an intermediary sends its own), HTTP/1.1 unless told otherwise.
    Raises ValueError for a name or value that would break the framing (CR, LF, NUL)."""
    if isinstance(event, Request):
        first = b"%s %s HTTP/%s\r\n" % (event.method, event.target, version)
    else:
        first = b"HTTP/%s %d %s\r\n" % (version, event.status, event.reason)
    out = [first]
    for name, value in event.headers:
        if not _TOKEN.fullmatch(name) or b"\r" in value or b"\n" in value or b"\0" in value:
            raise ValueError(f"header {name[:40]!r} cannot be written")
        out.append(b"%s: %s\r\n" % (name, value))
    out.append(b"\r\n")
    return b"".join(out)


class BodyWriter:
    """Frames Data and EndOfMessage events for the wire.

    chunked=True writes chunked framing: a Data that carries chunk_size/chunk_end (it came from a
    chunked body) keeps its chunk's boundaries, so a chunked body passes through byte for byte
    when the sender used lowercase hex sizes and no extensions; a Data without them (from a
    Content-Length body) becomes a chunk of its own. chunked=False writes the bytes as they are
    (for Content-Length or close-delimited bodies); trailers are then dropped."""

    def __init__(self, chunked: bool):
        self.chunked = chunked
        self._in_chunk = False

    def write(self, event) -> bytes:
        if isinstance(event, Data):
            return self.data(event)
        if isinstance(event, EndOfMessage):
            return self.end(event.trailers)
        raise TypeError(f"BodyWriter cannot write {type(event).__name__}")

    def data(self, event: Data) -> bytes:
        data = event.data
        if not self.chunked:
            return data
        if event.chunk_size is None and not self._in_chunk:
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        parts = []
        if event.chunk_size is not None:
            parts.append(b"%x\r\n" % event.chunk_size)
            self._in_chunk = True
        parts.append(data)
        if event.chunk_end:
            parts.append(b"\r\n")
            self._in_chunk = False
        return b"".join(parts)

    def end(self, trailers=()) -> bytes:
        if not self.chunked:
            return b""
        if self._in_chunk:
            raise RuntimeError("end of message inside a chunk")
        out = [b"0\r\n"]
        for name, value in trailers:
            out.append(b"%s: %s\r\n" % (name, value))
        out.append(b"\r\n")
        return b"".join(out)


def strip_hop_by_hop(headers, keep_upgrade: bool = False) -> tuple:
    """headers without the connection-specific fields a proxy must not forward: Connection, the
    fields it names, Keep-Alive, Proxy-Connection, TE and Upgrade. With keep_upgrade (the request
    is being upgraded end to end) Upgrade is kept and "Connection: upgrade" is sent with it.
    Transfer-Encoding stays: BodyWriter keeps the body's framing."""
    named = set(header_tokens(headers, b"connection"))
    drop = HOP_BY_HOP | named
    if keep_upgrade:
        drop = drop - {b"upgrade"}
    out = [(n, v) for n, v in headers if n.lower() not in drop]
    if keep_upgrade and get_header(out, b"upgrade") is not None:
        out.append((b"Connection", b"upgrade"))
    return tuple(out)
