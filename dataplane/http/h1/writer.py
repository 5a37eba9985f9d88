"""Turning events back into bytes: write_head for a Request or Response head, BodyWriter for
the body's Data and EndOfMessage. No state beyond BodyWriter's "inside a chunk"."""
from dataplane.http.h1.events import Data, EndOfMessage, Request
from dataplane.http.h1.headers import TOKEN


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
        if not TOKEN.fullmatch(name) or b"\r" in value or b"\n" in value or b"\0" in value:
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
