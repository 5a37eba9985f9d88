"""DNS messages for the mesh resolver (RFC 1035, RFC 2308, RFC 6891), sans-IO.

Only what a stub resolver's query and our answers need, written by hand with struct:
parse one query, build the responses the resolver sends. No sockets, no clock, no asyncio.

Parsing rules (parse_query). Every input, of any length, either returns a Query or raises
DnsFormatError; nothing else escapes.
- Header shorter than 12 bytes: DnsFormatError(None) (no id to answer with).
- QR set (the packet is a response): DnsFormatError(id, is_response=True). Callers must not
  answer it: replying to responses is how two resolvers end up in a packet loop.
- QDCOUNT != 1, a truncated question, a compression pointer or a reserved label type
  (0x40/0x80) in the question name, a name longer than 255 bytes on the wire:
  DnsFormatError(id). A label byte of 64..191 is a reserved label type, so "label > 63"
  falls in that case. Queries never need compression, so it is rejected rather than
  followed, and no loop can arise.
- Everything after the question is scanned leniently and only to notice an OPT record
  (EDNS): records are skipped without following pointers; the scan stops at the first
  record that does not fit in the packet, so huge counts cost nothing and garbage is ignored.

Names are returned in presentation form: lowercase ASCII, labels joined by ".", no trailing
dot, the root as "". Bytes that are not printable ASCII, and "." or "\\" inside a label, are
escaped as in RFC 4343 ("\\DDD", "\\.", "\\\\"), so a label never splits into two.

Responses. QR=1, the opcode and the RD and CD bits are copied, RA=1; AA=1 on mesh answers
(answer, nodata, nxdomain; pass authoritative=False to clear it). The question is echoed
byte for byte; answer owners are the compression pointer 0xC00C. EDNS: when the query carried
an OPT record, the response carries a minimal one (root owner, payload size EDNS_PAYLOAD,
version 0, no options, DO clear); otherwise none. A query with EDNS version > 0 should get
badvers(q). UDP answers are kept within the client's limit (512 bytes, or its EDNS payload
size): A records that do not fit are left out and TC is set.
"""

import ipaddress
import struct
from dataclasses import dataclass

# types, classes, rcodes, flags
TYPE_A = 1
TYPE_NS = 2
TYPE_SOA = 6
TYPE_MX = 15
TYPE_TXT = 16
TYPE_AAAA = 28
TYPE_SRV = 33
TYPE_OPT = 41
TYPE_ANY = 255
CLASS_IN = 1

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode, carried in the OPT record

QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
CD = 0x0010
OPCODE_QUERY = 0

HEADER = struct.Struct("!6H")
_QTAIL = struct.Struct("!HH")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength

MAX_NAME = 255  # wire length of a name, length bytes and the root label included
MAX_LABEL = 63
UDP_LIMIT = 512  # a response to a query without EDNS
EDNS_PAYLOAD = 1232  # the payload size we advertise in our OPT record
NEGATIVE_TTL = 5  # SOA minimum in negative answers: mesh names come and go


class DnsFormatError(ValueError):
    """The packet is not a query we can parse.

    id is the query id when the header could be read, else None. is_response is True when
    the packet had QR set: a response, to be dropped rather than answered.
    """

    def __init__(self, id=None, message="malformed query", *, is_response=False):
        super().__init__(message)
        self.id = id
        self.is_response = is_response


@dataclass(frozen=True)
class Query:
    id: int
    flags: int  # the whole 16-bit flags word as received
    opcode: int
    rd: bool
    name: str  # lowercase, no trailing dot, "" for the root
    qtype: int
    qclass: int
    has_edns: bool
    raw_question: bytes  # the question section as received (name, qtype, qclass)
    udp_size: int = UDP_LIMIT  # the client's UDP payload limit: 512, or its EDNS size if larger
    edns_version: int = 0


# --- parsing ------------------------------------------------------------------------------


def _escape_table():
    table = []
    for b in range(256):
        if 0x41 <= b <= 0x5A:
            table.append(chr(b + 0x20))
        elif b in (0x2E, 0x5C):  # "." and "\"
            table.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            table.append(chr(b))
        else:
            table.append("\\%03d" % b)
    return tuple(table)


_ESCAPE = _escape_table()
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _label_text(label: bytes) -> str:
    if _PLAIN.issuperset(label):
        return label.decode("ascii").lower()
    return "".join(_ESCAPE[b] for b in label)


def _read_question_name(data: bytes, off: int, qid: int):
    """Read an uncompressed name at off; return (name, offset after it)."""
    labels = []
    wire = 0
    n = len(data)
    while True:
        if off >= n:
            raise DnsFormatError(qid, "question name runs past the end of the packet")
        length = data[off]
        if length & 0xC0 == 0xC0:
            raise DnsFormatError(qid, "compression pointer in the question")
        if length & 0xC0:
            raise DnsFormatError(qid, f"reserved label type 0x{length & 0xC0:02x} (label length {length})")
        wire += 1 + length
        if wire > MAX_NAME:
            raise DnsFormatError(qid, "question name longer than 255 bytes")
        off += 1
        if length == 0:
            return ".".join(labels), off
        if off + length > n:
            raise DnsFormatError(qid, "question label runs past the end of the packet")
        labels.append(_label_text(data[off:off + length]))
        off += length


def _skip_name(data: bytes, off: int):
    """Offset after the name at off, without following pointers; None if it does not fit."""
    n = len(data)
    while off < n:
        length = data[off]
        if length & 0xC0 == 0xC0:
            return off + 2 if off + 2 <= n else None
        if length & 0xC0:
            return None
        off += 1 + length
        if length == 0:
            return off
    return None


def _scan_opt(data: bytes, off: int, records: int):
    """(udp_size, version) of the first OPT record among the next records, or None."""
    n = len(data)
    for _ in range(records):
        owner = off
        off = _skip_name(data, off)
        if off is None or off + _RR.size > n:
            return None
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
        off += _RR.size + rdlen
        if off > n:
            return None
        if rtype == TYPE_OPT and data[owner] == 0:
            return rclass, (ttl >> 16) & 0xFF
    return None


def parse_query(data: bytes) -> Query:
    """Parse one DNS query; raise DnsFormatError if it is not one (see the module docstring)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DnsFormatError(None, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER.size:
        raise DnsFormatError(None, f"header needs 12 bytes, got {len(data)}")
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        raise DnsFormatError(qid, "QR is set: a response, not a query", is_response=True)
    if qdcount != 1:
        raise DnsFormatError(qid, f"QDCOUNT is {qdcount}, expected 1")
    name, off = _read_question_name(data, HEADER.size, qid)
    if off + _QTAIL.size > len(data):
        raise DnsFormatError(qid, "question type and class missing")
    qtype, qclass = _QTAIL.unpack_from(data, off)
    end = off + _QTAIL.size
    opt = _scan_opt(data, end, ancount + nscount + arcount)
    udp_size, version = (max(UDP_LIMIT, opt[0]), opt[1]) if opt else (UDP_LIMIT, 0)
    return Query(id=qid, flags=flags, opcode=(flags >> 11) & 0xF, rd=bool(flags & RD), name=name,
                 qtype=qtype, qclass=qclass, has_edns=opt is not None, raw_question=data[HEADER.size:end],
                 udp_size=udp_size, edns_version=version)


def is_response_to(data: bytes, qid: int, raw_question: bytes) -> bool:
    """Whether data is a response to the query with this id and question (upstream replies).

    The name is compared case-insensitively (resolvers may randomise or normalise case).
    """
    if len(data) < HEADER.size + len(raw_question):
        return False
    rid, flags, qdcount = struct.unpack_from("!3H", data)
    if rid != qid or not flags & QR or qdcount != 1:
        return False
    echoed = data[HEADER.size:HEADER.size + len(raw_question)]
    return echoed[:-4].lower() == raw_question[:-4].lower() and echoed[-4:] == raw_question[-4:]


def with_id(data: bytes, qid: int) -> bytes:
    """The same message with its id replaced (relaying an upstream answer to the client)."""
    return struct.pack("!H", qid & 0xFFFF) + bytes(data[2:])


# --- building -----------------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    """Wire form of a plain dotted name (no escapes); raise ValueError if it cannot be one."""
    name = name.rstrip(".") if name not in ("", ".") else ""
    out = bytearray()
    for label in name.split(".") if name else ():
        raw = label.encode("ascii")
        if not 1 <= len(raw) <= MAX_LABEL:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"name {name!r} is longer than 255 bytes")
    return bytes(out)


def _question_labels(raw_question: bytes):
    """[(offset in the message, lowercase label)] of the echoed question name."""
    out, off = [], 0
    while off < len(raw_question) and raw_question[off]:
        length = raw_question[off]
        out.append((HEADER.size + off, raw_question[off + 1:off + 1 + length].lower()))
        off += 1 + length
    return out


def _name_in_message(q: Query, name: str) -> bytes:
    """name on the wire, as a pointer into the question when the question ends with it."""
    wanted = [label.encode("ascii").lower() for label in name.strip(".").split(".")] if name.strip(".") else []
    labels = _question_labels(q.raw_question)
    if wanted and len(wanted) <= len(labels) and [lab for _, lab in labels[-len(wanted):]] == wanted:
        return struct.pack("!H", 0xC000 | labels[-len(wanted)][0])
    return encode_name(name)


def _flags(q: Query, rcode: int, aa: bool, tc: bool = False) -> int:
    flags = QR | (q.opcode & 0xF) << 11 | (q.flags & (RD | CD)) | RA | (rcode & 0xF)
    if aa:
        flags |= AA
    if tc:
        flags |= TC
    return flags


def _opt(q: Query, ext_rcode: int = 0) -> bytes:
    if not q.has_edns:
        return b""
    return b"\x00" + _RR.pack(TYPE_OPT, EDNS_PAYLOAD, (ext_rcode >> 4) << 24, 0)


def _response(q: Query, rcode: int, *, aa: bool, answers=(), authority=(), tc=False, ext_rcode=0) -> bytes:
    opt = _opt(q, ext_rcode)
    return (HEADER.pack(q.id, _flags(q, rcode, aa, tc), 1, len(answers), len(authority), 1 if opt else 0)
            + q.raw_question + b"".join(answers) + b"".join(authority) + opt)


def _soa(q: Query, zone: str, ttl: int) -> bytes:
    owner = _name_in_message(q, zone)
    mname = owner if owner[0] & 0xC0 else encode_name(zone)
    rname = b"\x0ahostmaster" + mname  # hostmaster.<zone>
    rdata = mname + rname + struct.pack("!5I", 1, 3600, 600, 86400, ttl)
    return owner + _RR.pack(TYPE_SOA, CLASS_IN, ttl, len(rdata)) + rdata


def answer(q: Query, ips, ttl: int, *, authoritative: bool = True) -> bytes:
    """NOERROR with one record per address, A for an IPv4 one and AAAA for an IPv6 one (owner:
    pointer to the question name). The caller picks the addresses that fit the question type.

    Records that would push the response past the client's UDP limit are left out and TC set.
    """
    records = []
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        rtype = TYPE_A if addr.version == 4 else TYPE_AAAA
        records.append(b"\xc0\x0c" + _RR.pack(rtype, CLASS_IN, ttl, len(addr.packed)) + addr.packed)
    room = q.udp_size - HEADER.size - len(q.raw_question) - len(_opt(q))
    fit, used = 0, 0
    while fit < len(records) and used + len(records[fit]) <= room:
        used += len(records[fit])
        fit += 1
    return _response(q, NOERROR, aa=authoritative, answers=records[:fit], tc=len(records) > fit)


def nodata(q: Query, authority_name: str | None = None, *, negative_ttl: int = NEGATIVE_TTL,
           authoritative: bool = True) -> bytes:
    """NOERROR without answers: the name exists but has no record of this type (e.g. AAAA).

    With authority_name (the zone, e.g. "svc.glasswing") an SOA goes in the authority section
    so that caches keep the negative answer for negative_ttl seconds (RFC 2308).
    """
    auth = [_soa(q, authority_name, negative_ttl)] if authority_name else []
    return _response(q, NOERROR, aa=authoritative, authority=auth)


def nxdomain(q: Query, authority_name: str | None = None, *, negative_ttl: int = NEGATIVE_TTL,
             authoritative: bool = True) -> bytes:
    """NXDOMAIN: the name does not exist (optionally with the zone's SOA, as in nodata)."""
    auth = [_soa(q, authority_name, negative_ttl)] if authority_name else []
    return _response(q, NXDOMAIN, aa=authoritative, authority=auth)


def refused(q: Query) -> bytes:
    return _response(q, REFUSED, aa=False)


def servfail(q: Query) -> bytes:
    return _response(q, SERVFAIL, aa=False)


def notimp(q: Query) -> bytes:
    """NOTIMP: an opcode other than QUERY."""
    return _response(q, NOTIMP, aa=False)


def badvers(q: Query) -> bytes:
    """Extended rcode BADVERS (16): the query's EDNS version is not 0 (RFC 6891 6.1.3)."""
    return _response(q, BADVERS & 0xF, aa=False, ext_rcode=BADVERS)


def formerr(qid: int | None) -> bytes:
    """FORMERR, header only (no question: we could not read one). qid 0 when unknown."""
    return HEADER.pack((qid or 0) & 0xFFFF, QR | RA | FORMERR, 0, 0, 0, 0)
