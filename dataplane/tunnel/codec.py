"""Encoding and decoding of the tunnel stream preamble (port 15008).

A tunnel stream starts with one length-delimited StreamOpen from the client forwarder,
answered by one length-delimited Reply (accept or reject) from the server forwarder;
every later byte is the application's, unframed. Length-delimited means a protobuf
varint holding the message's length, then the message (see dataplane/proto/tunnel.proto).

This is the only module that imports tunnel_pb2. It performs no I/O and reads no clock: callers
pass in bytes and get back frozen dataclass events (or bytes to send). That lets asyncio,
a Cython loop or a unit test drive it unchanged. Timeouts and sockets belong to the caller.
"""

import ipaddress
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from dataplane.proto import tunnel_pb2 as pb

VERSION = 1
MAX_PREAMBLE = 16 * 1024  # cap on one message's encoded length, prefix excluded

REASONS = ("no_such_service", "no_endpoint", "refused_by_app", "policy", "malformed", "version")


@dataclass(frozen=True)
class Address:
    ip: str  # IPv4 (dotted) or IPv6 (compressed text)
    port: int


@dataclass(frozen=True)
class Open:
    version: int
    source_pod: str
    source_identity: str
    service: str
    port: int
    original_dst: Address  # the service VIP:port the application dialled
    target: Address  # the endpoint pod ip:port the sender chose
    trace_id: str
    source_node: str


@dataclass(frozen=True)
class Accept:
    version: int
    trace_id: str


@dataclass(frozen=True)
class Reject:
    reason: str  # one of REASONS
    detail: str
    trace_id: str


class PreambleError(Exception):
    """The peer sent something that is not a valid preamble; reason is "malformed" or "version"."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


# --- encoding -----------------------------------------------------------------------------


def _varint(n):
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _frame(msg):
    body = msg.SerializeToString()
    if len(body) > MAX_PREAMBLE:
        raise ValueError(f"preamble message is {len(body)} bytes, over {MAX_PREAMBLE}")
    return _varint(len(body)) + body


def _pb_address(a):
    ip = ipaddress.ip_address(a.ip)
    if ip.version == 6:
        return pb.Address(ip6=ip.packed, port=a.port)
    return pb.Address(ip=int(ip), port=a.port)


def encode_open(o: Open) -> bytes:
    problem = _open_problem(o)
    if problem:
        raise ValueError(problem)
    return _frame(pb.StreamOpen(
        version=o.version, source_pod=o.source_pod, source_identity=o.source_identity,
        service=o.service, port=o.port, original_dst=_pb_address(o.original_dst),
        target=_pb_address(o.target), trace_id=o.trace_id, source_node=o.source_node))


def encode_accept(a: Accept) -> bytes:
    return _frame(pb.Reply(accept=pb.StreamAccept(version=a.version, trace_id=a.trace_id)))


def encode_reject(r: Reject) -> bytes:
    if r.reason not in REASONS:
        raise ValueError(f"unknown reject reason {r.reason!r}")
    reason = pb.RejectReason.Value(r.reason.upper())
    return _frame(pb.Reply(reject=pb.StreamReject(reason=reason, detail=r.detail, trace_id=r.trace_id)))


# --- decoding -----------------------------------------------------------------------------


def _malformed(message):
    return PreambleError("malformed", message)


def _check_version(version, what):
    if version == 0:  # proto3 cannot tell 0 from absent: this is not a preamble at all
        raise _malformed(f"{what} carries no version")
    if version != VERSION:
        raise PreambleError("version", f"{what} version {version}, expected {VERSION}")


def _open_problem(o):
    if not o.service:
        return "open names no service"
    if not 1 <= o.port <= 65535:
        return f"open service port {o.port} out of range"
    for name in ("original_dst", "target"):
        a = getattr(o, name)
        if not 1 <= a.port <= 65535:
            return f"open {name} port {a.port} out of range"
    return None


def _read_varint(buf):
    """(value, length) of the varint at the start of buf, or None if it is incomplete."""
    value = 0
    for i, byte in enumerate(buf[:5]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value > 0xFFFFFFFF:
                raise _malformed("length prefix exceeds 32 bits")
            return value, i + 1
    if len(buf) >= 5:
        raise _malformed("length prefix longer than 5 bytes")
    return None


def _address(m, what):
    if m.WhichOneof("family") == "ip6":
        if len(m.ip6) != 16:
            raise _malformed(f"open {what} ip6 is {len(m.ip6)} bytes, not 16")
        return Address(ip=str(ipaddress.IPv6Address(m.ip6)), port=m.port)
    return Address(ip=str(ipaddress.IPv4Address(m.ip)), port=m.port)


def _decode_open(body):
    m = pb.StreamOpen()
    try:
        m.ParseFromString(body)
    except DecodeError:
        raise _malformed("open is not a valid StreamOpen message") from None
    _check_version(m.version, "open")
    if not m.HasField("original_dst") or not m.HasField("target"):
        raise _malformed("open lacks original_dst or target")
    o = Open(version=m.version, source_pod=m.source_pod, source_identity=m.source_identity,
             service=m.service, port=m.port, original_dst=_address(m.original_dst, "original_dst"),
             target=_address(m.target, "target"), trace_id=m.trace_id, source_node=m.source_node)
    problem = _open_problem(o)
    if problem:
        raise _malformed(problem)
    return o


def _decode_reply(body):
    m = pb.Reply()
    try:
        m.ParseFromString(body)
    except DecodeError:
        raise _malformed("reply is not a valid Reply message") from None
    kind = m.WhichOneof("kind")
    if kind == "accept":
        _check_version(m.accept.version, "accept")
        return Accept(version=m.accept.version, trace_id=m.accept.trace_id)
    if kind == "reject":
        r = m.reject
        if r.reason not in pb.RejectReason.values() or r.reason == pb.REJECT_UNSPECIFIED:
            raise _malformed(f"reject with unknown reason {r.reason}")
        return Reject(reason=pb.RejectReason.Name(r.reason).lower(), detail=r.detail, trace_id=r.trace_id)
    raise _malformed("reply is neither accept nor reject")


_DECODERS = {"open": _decode_open, "reply": _decode_reply}


class PreambleReader:
    """Buffers bytes until one preamble message is complete, then returns it as an event.

    kind is "open" on the server side (expects StreamOpen) or "reply" on the client side.
    feed() returns None while incomplete, the event once complete, and raises PreambleError
    on bad input. After an event, leftover holds the application bytes that followed the
    message; the reader is finished and further feed() calls raise RuntimeError.
    """

    def __init__(self, kind, max_size=MAX_PREAMBLE):
        if kind not in _DECODERS:
            raise ValueError(f"kind must be 'open' or 'reply', not {kind!r}")
        self._decode = _DECODERS[kind]
        self._max_size = max_size
        self._buf = bytearray()
        self._done = False
        self._leftover = None

    @property
    def buffered(self):
        """Bytes held so far (diagnostics)."""
        return len(self._buf)

    @property
    def leftover(self):
        """Bytes that followed the message; only once feed() has returned an event."""
        if self._leftover is None:
            raise RuntimeError("no preamble decoded yet")
        return self._leftover

    def feed(self, data):
        if self._done:
            raise RuntimeError("preamble reader is finished")
        self._buf += data
        try:
            prefix = _read_varint(self._buf)
            if prefix is None:
                return None
            size, start = prefix
            if size == 0 or size > self._max_size:
                raise _malformed(f"declared length {size} not in 1..{self._max_size}")
            end = start + size
            if len(self._buf) < end:
                return None
            event = self._decode(bytes(self._buf[start:end]))
        except PreambleError:
            self._done = True
            raise
        self._done = True
        self._leftover = bytes(self._buf[end:])
        self._buf = bytearray()
        return event
