"""Does a client speak HTTP/1.x? Decided from the first bytes it sends, without I/O.

sniff(prefix) looks at what the client has sent so far and answers "http", "opaque" or
"need_more". It answers as early as the bytes allow: a first byte that is not an uppercase
letter (TLS, the PostgreSQL startup message, Redis RESP, binary protocols) is "opaque" at once,
and so is anything that leaves the grammar of an HTTP/1.x request line,
`METHOD SP TARGET SP HTTP/1.`. "http" needs that whole prefix, so that a text protocol that
happens to start with an uppercase word (Redis inline "SET k v", SMTP "EHLO x") is not
mistaken for HTTP. The HTTP/2 prior-knowledge preface ("PRI * HTTP/2.0") is "opaque": it is
relayed raw.

The deadline is the caller's. A server-first protocol (MySQL/MariaDB, SMTP, FTP, SSH's banner
comes from the server too) has a client that sends nothing until the server speaks, so the
forwarder must stop waiting, treat the connection as opaque and connect upstream. Recommended:
SNIFF_DEADLINE (100 ms, Istio's protocol detection timeout): long enough for an HTTP client's
first segment, which in practice arrives with the connection's first RTT, short enough to add
little to the setup of a server-first connection. Ports declared with protocol "http" skip
sniffing; a deadline that fires, or "need_more" at MAX_SNIFF bytes, means "opaque". The
forwarder pays that deadline once per server-first service port: it learns the port from the
first connection whose client stayed silent while the upstream spoke first, and relays the
next ones without sniffing (dataplane/node/server_first.py).
"""

SNIFF_DEADLINE = 0.1  # seconds, see above
MAX_SNIFF = 8 * 1024 + 64  # a request line longer than this is not worth waiting for
MAX_METHOD = 20  # "UPDATEREDIRECTREF" (17) is the longest registered method

HTTP, OPAQUE, NEED_MORE = "http", "opaque", "need_more"

_UPPER = frozenset(range(ord("A"), ord("Z") + 1))
_METHOD_CHARS = _UPPER | {ord("-"), ord("_")}
_VERSION_PREFIX = b"HTTP/1."
_H2_PREFACE = b"PRI * HTTP/2.0"


def sniff(prefix: bytes) -> str:
    """"http", "opaque" or "need_more" for the first bytes a client sent (see the module doc)."""
    if not prefix:
        return NEED_MORE
    if prefix[0] not in _UPPER:
        return OPAQUE
    if prefix[:3] == b"PRI" and (prefix[:14] == _H2_PREFACE[:len(prefix[:14])]):
        return OPAQUE if len(prefix) >= 4 else NEED_MORE
    # METHOD
    space = prefix.find(b" ", 0, MAX_METHOD + 1)
    method = prefix[:space] if space >= 0 else prefix[:MAX_METHOD + 1]
    for c in method:
        if c not in _METHOD_CHARS:
            return OPAQUE
    if space < 0:
        return OPAQUE if len(prefix) > MAX_METHOD else NEED_MORE
    # SP TARGET: visible ASCII up to the next space
    start = space + 1
    end = prefix.find(b" ", start)
    target = prefix[start:end] if end >= 0 else prefix[start:]
    for c in target:
        if c < 0x21 or c > 0x7E:
            return OPAQUE
    if end < 0:
        return NEED_MORE if len(prefix) < MAX_SNIFF else OPAQUE
    if end == start:
        return OPAQUE  # two spaces: no target
    # SP "HTTP/1."
    version = prefix[end + 1:end + 1 + len(_VERSION_PREFIX)]
    if version != _VERSION_PREFIX[:len(version)]:
        return OPAQUE
    return HTTP if len(version) == len(_VERSION_PREFIX) else NEED_MORE
