"""Header fields of HTTP/1.1 messages: lookups, connection tokens, and what a proxy drops.

Headers are kept as a tuple of (name, value) byte pairs in their original case and order;
lookups take the name as lowercase bytes. Nothing here parses or writes whole messages.
"""
import re

# Connection-specific fields (RFC 9110 7.6.1) that a proxy does not forward.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})

TCHAR = rb"!#$%&'*+.^_`|~0-9A-Za-z-"
TOKEN = re.compile(rb"[%s]+" % TCHAR)  # a method or a field name (RFC 9110 5.6.2)


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


def keep_alive(version: bytes, headers) -> bool:
    """Whether a message of this version with these headers allows another one after it."""
    tokens = header_tokens(headers, b"connection")
    if b"close" in tokens:
        return False
    if version == b"1.0":
        return b"keep-alive" in tokens
    return True


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
