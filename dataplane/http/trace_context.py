"""W3C Trace Context (traceparent) and x-request-id for requests crossing the mesh, without I/O.

The forwarder does not record spans: it passes a valid traceparent on unchanged and starts a
trace only when the request has none, or one that is invalid, so that the application's own
spans and our logs share a trace id. Randomness is injected (a random.Random), so tests are
exact; production passes random.SystemRandom() or a Random seeded from os.urandom.

traceparent, version 00 (https://www.w3.org/TR/trace-context/#traceparent-header):
    00-<32 lowercase hex trace-id, not all zero>-<16 lowercase hex parent-id, not all zero>-<2 hex flags>
A higher version (not "ff") is accepted when its first 55 characters parse as above and, if
longer, the 56th is "-". Several traceparent fields, or an invalid one, count as invalid: they
are replaced by a new one and tracestate is dropped, since it described another trace.

x-request-id: kept when present and non-empty, else a new UUID4.
"""

import re
import uuid
from dataclasses import dataclass

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
REQUEST_ID = b"x-request-id"
SAMPLED = 0x01

_V00 = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(frozen=True)
class TraceParent:
    version: int
    trace_id: str  # 32 lowercase hex digits
    parent_id: str  # 16 lowercase hex digits
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header_value(self) -> bytes:
        """The traceparent to send: version 00, whatever version was received (the spec's rule
        for a participant that only knows 00)."""
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags:02x}".encode("ascii")


def parse_traceparent(value) -> TraceParent:
    """A TraceParent for a traceparent value (str or bytes), or None when it is invalid."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip(" \t")
    m = _V00.fullmatch(value[:55])
    if m is None:
        return None
    version = int(m.group(1), 16)
    if version == 0xFF:
        return None
    if version == 0 and len(value) != 55:
        return None
    if version > 0 and len(value) > 55 and value[55] != "-":
        return None
    trace_id, parent_id = m.group(2), m.group(3)
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return TraceParent(version, trace_id, parent_id, int(m.group(4), 16))


def new_traceparent(rng, sampled: bool = False) -> TraceParent:
    """A new trace: random non-zero trace id and parent id from rng."""
    trace_id = 0
    while trace_id == 0:
        trace_id = rng.getrandbits(128)
    parent_id = 0
    while parent_id == 0:
        parent_id = rng.getrandbits(64)
    return TraceParent(0, f"{trace_id:032x}", f"{parent_id:016x}", SAMPLED if sampled else 0)


def new_request_id(rng) -> str:
    """A UUID4 string made from rng."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True)
class TraceHeaders:
    headers: tuple  # the request's headers with traceparent and x-request-id ensured
    traceparent: TraceParent
    request_id: str
    started: bool  # True when the trace was started here (no valid traceparent came in)


def ensure_trace(headers, rng) -> TraceHeaders:
    """headers (a sequence of (name bytes, value bytes)) with a valid traceparent and an
    x-request-id, plus what they hold. Valid fields keep their place and bytes; new ones are
    appended."""
    parents = [v for n, v in headers if n.lower() == TRACEPARENT]
    parsed = parse_traceparent(parents[0]) if len(parents) == 1 else None
    out = list(headers)
    started = parsed is None
    if started:
        parsed = new_traceparent(rng)
        out = [(n, v) for n, v in out if n.lower() not in (TRACEPARENT, TRACESTATE)]
        out.append((TRACEPARENT, parsed.header_value()))
    ids = [v for n, v in out if n.lower() == REQUEST_ID and v.strip()]
    if ids:
        request_id = ids[0].decode("latin-1")
    else:
        request_id = new_request_id(rng)
        out = [(n, v) for n, v in out if n.lower() != REQUEST_ID]  # drop empty ones
        out.append((REQUEST_ID, request_id.encode("ascii")))
    return TraceHeaders(tuple(out), parsed, request_id, started)


def new_trace_id(rng) -> str:
    """A trace id for a stream the mesh starts: 32 lowercase hex digits, never all zero.
    From a random.Random seeded once from os.urandom: unpredictable enough to correlate
    logs, and no getrandom(2) per connection."""
    return f"{rng.getrandbits(128) or 1:032x}"
