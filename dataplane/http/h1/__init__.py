"""HTTP/1.1 message framing for one direction of a connection (RFC 9112), without I/O.

This package is the one import point (`from dataplane.http import h1`); its modules split the
codec by concern: events.py (events, sentinels, HttpError), headers.py (field lookups,
hop-by-hop), parser.py (the state machine and limits), request.py and response.py (one parser
per direction), writer.py (write_head, BodyWriter).

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

from dataplane.http.h1.events import (IDEMPOTENT_METHODS, NEED_DATA, PAUSED, ConnectionClosed, Data,
                                      EndOfMessage, HttpError, InformationalResponse, Request,
                                      Response, Switched)
from dataplane.http.h1.headers import (HOP_BY_HOP, get_all_headers, get_header, header_tokens,
                                       strip_hop_by_hop)
from dataplane.http.h1.parser import MAX_CHUNK_LINE, MAX_HEAD, MAX_HEADERS, MAX_REQUEST_LINE
from dataplane.http.h1.request import KNOWN_CODINGS, RequestParser
from dataplane.http.h1.response import ResponseParser
from dataplane.http.h1.writer import BodyWriter, write_head

__all__ = [
    "Request", "Response", "InformationalResponse", "Data", "EndOfMessage", "ConnectionClosed",
    "Switched", "NEED_DATA", "PAUSED", "HttpError", "RequestParser", "ResponseParser",
    "write_head", "BodyWriter", "strip_hop_by_hop", "get_header", "get_all_headers",
    "header_tokens", "IDEMPOTENT_METHODS", "HOP_BY_HOP", "KNOWN_CODINGS", "MAX_REQUEST_LINE",
    "MAX_HEAD", "MAX_HEADERS", "MAX_CHUNK_LINE",
]
