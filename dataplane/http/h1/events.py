"""The events an HTTP/1.1 parser produces and write_head/BodyWriter consume, the NEED_DATA and
PAUSED sentinels, and HttpError. Events are small frozen dataclasses holding bytes; see the
package docstring for the order a parser produces them in."""
from dataclasses import dataclass

from dataplane.http.h1.headers import get_all_headers, get_header, keep_alive

# Methods whose requests may be repeated without changing the result (RFC 9110 9.2.2).
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class _Head:
    def get(self, name: bytes, default=None):
        return get_header(self.headers, name, default)

    def get_all(self, name: bytes) -> list:
        return get_all_headers(self.headers, name)

    @property
    def keep_alive(self) -> bool:
        """Whether the sender allows another message on this connection after this one."""
        return keep_alive(self.version, self.headers)


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
