import random
import struct

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT

from dataplane.dns import codec as dc


def query_bytes(name="web.default.svc.glasswing", qtype="A", id=0x1234, rd=1, edns=None, **kw):
    ar = [DNSRROPT(rclass=edns)] if edns else []
    return bytes(DNS(id=id, rd=rd, qd=DNSQR(qname=name, qtype=qtype), ar=ar, **kw))


def q(name="web.default.svc.glasswing", qtype="A", **kw):
    return dc.parse_query(query_bytes(name, qtype, **kw))


def header(data):
    return struct.unpack_from("!6H", data)


def rr(section, i=0):
    """The i-th record of a scapy section (sections are lists since scapy 2.5)."""
    return section[i]


# --- parsing ------------------------------------------------------------------------------


def test_parse_scapy_query():
    query = q("Web.Default.SVC.glasswing.", "A")
    assert query.id == 0x1234
    assert query.flags == 0x0100 and query.rd is True and query.opcode == 0
    assert query.name == "web.default.svc.glasswing"
    assert (query.qtype, query.qclass) == (dc.TYPE_A, dc.CLASS_IN)
    assert query.has_edns is False and query.udp_size == 512
    assert query.raw_question == b"\x03Web\x07Default\x03SVC\x09glasswing\x00\x00\x01\x00\x01"


@pytest.mark.parametrize("qtype,code", [("A", 1), ("AAAA", 28), ("MX", 15), ("TXT", 16), ("SRV", 33), ("ALL", 255)])
def test_parse_types(qtype, code):
    assert q("a.b", qtype).qtype == code


def test_parse_no_rd_and_opcode():
    query = q(rd=0, opcode=2)
    assert query.rd is False and query.opcode == 2 and query.flags == 2 << 11


def test_parse_edns():
    query = q(edns=4096)
    assert query.has_edns and query.udp_size == 4096 and query.edns_version == 0
    assert q(edns=100).udp_size == 512  # below 512 means 512 (RFC 6891)
    data = bytes(DNS(id=7, qd=DNSQR(qname="x"), ar=DNSRROPT(rclass=1232, version=1)))
    assert dc.parse_query(data).edns_version == 1


def test_parse_edns_after_other_records():
    # an answer (with a pointer owner), an authority record, then OPT: OPT still noticed
    data = bytes(DNS(id=7, qd=DNSQR(qname="x.y"), an=DNSRR(rrname="x.y", rdata="1.2.3.4"),
                     ns=DNSRR(rrname="y", type="TXT", rdata="hi"), ar=DNSRROPT(rclass=2048)))
    query = dc.parse_query(data)
    assert query.has_edns and query.udp_size == 2048
    assert query.raw_question == b"\x01x\x01y\x00\x00\x01\x00\x01"


def test_parse_root_and_escapes():
    assert dc.parse_query(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01").name == ""
    raw = b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x03a.B\x04\x00\\\xff_\x00" + b"\x00\x01\x00\x01"
    assert dc.parse_query(raw).name == "a\\.b.\\000\\\\\\255_"


def test_parse_accepts_max_name_and_label():
    label = b"\x3f" + b"a" * 63
    name = label * 3 + b"\x3d" + b"b" * 61 + b"\x00"  # 64*3 + 62 + 1 = 255 bytes
    assert len(name) == 255
    query = dc.parse_query(struct.pack("!6H", 9, 0, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01")
    assert len(query.name) == 253


def test_parse_ignores_trailing_garbage():
    data = query_bytes() + b"\xde\xad\xbe\xef" * 10
    assert dc.parse_query(data).name == "web.default.svc.glasswing"


def test_parse_accepts_bytearray_and_memoryview():
    data = query_bytes()
    assert dc.parse_query(bytearray(data)) == dc.parse_query(memoryview(data)) == dc.parse_query(data)


# --- malformed ----------------------------------------------------------------------------

H = struct.Struct("!6H")
GOOD_Q = b"\x03web\x00\x00\x01\x00\x01"


def hdr(id=0xBEEF, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return H.pack(id, flags, qd, an, ns, ar)


MALFORMED = [
    # (label, packet, expected id, is_response)
    ("empty", b"", None, False),
    ("11 bytes", b"\xbe\xef" + b"\x00" * 9, None, False),
    ("header only", hdr(), 0xBEEF, False),
    ("QR set (scapy)", bytes(DNS(id=0xBEEF, qr=1, qd=DNSQR(qname="web"))), 0xBEEF, True),
    ("qdcount 0 (scapy)", bytes(DNS(id=0xBEEF, qd=[])), 0xBEEF, False),
    ("qdcount 2 (scapy)", bytes(DNS(id=0xBEEF, qd=[DNSQR(qname="a"), DNSQR(qname="b")])), 0xBEEF, False),
    ("qdcount 2 (raw)", hdr(qd=2) + GOOD_Q + GOOD_Q, 0xBEEF, False),
    ("qdcount 65535 no data", hdr(qd=0xFFFF), 0xBEEF, False),
    ("label length 64", hdr() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", 0xBEEF, False),
    ("label type 0x80", hdr() + b"\x80" + b"a" * 0x80 + b"\x00\x00\x01\x00\x01", 0xBEEF, False),
    ("name 256 bytes", hdr() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", 0xBEEF, False),
    ("name 300 bytes", hdr() + (b"\x09" + b"a" * 9) * 30 + b"\x00\x00\x01\x00\x01", 0xBEEF, False),
    ("pointer in question", hdr() + b"\x03web\xc0\x0c\x00\x01\x00\x01", 0xBEEF, False),
    ("pointer loop", hdr() + b"\xc0\x0c\x00\x01\x00\x01", 0xBEEF, False),
    ("pointer loop two hops", hdr() + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01", 0xBEEF, False),
    ("pointer past the end", hdr() + b"\xc0\xff", 0xBEEF, False),
    ("truncated label", hdr() + b"\x07web", 0xBEEF, False),
    ("no root label", hdr() + b"\x03web", 0xBEEF, False),
    ("no qtype", hdr() + b"\x03web\x00", 0xBEEF, False),
    ("half qclass", hdr() + b"\x03web\x00\x00\x01\x00", 0xBEEF, False),
    ("truncated scapy question", query_bytes(id=0xBEEF)[:-3], 0xBEEF, False),
    ("huge counts no data", H.pack(0xBEEF, 0, 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF), 0xBEEF, False),
    ("response with answers", bytes(DNS(id=0xBEEF, qr=1, qd=DNSQR(qname="x"), an=DNSRR(rrname="x"))), 0xBEEF, True),
]


@pytest.mark.parametrize("label,packet,qid,is_response", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(label, packet, qid, is_response):
    with pytest.raises(dc.DnsFormatError) as info:
        dc.parse_query(packet)
    assert info.value.id == qid
    assert info.value.is_response is is_response


@pytest.mark.parametrize("bad", [None, 12, "abc", [1, 2, 3]])
def test_not_bytes(bad):
    with pytest.raises(dc.DnsFormatError) as info:
        dc.parse_query(bad)
    assert info.value.id is None


def test_huge_record_counts_after_question_are_lenient():
    # one good question; an/ns/ar claim 65535 records each but there is nothing: parsed, no EDNS
    data = H.pack(5, 0x0100, 1, 0xFFFF, 0xFFFF, 0xFFFF) + GOOD_Q
    query = dc.parse_query(data)
    assert query.name == "web" and not query.has_edns


def test_pointer_loop_in_additional_section_is_not_followed():
    data = hdr(ar=3) + GOOD_Q + b"\xc0\x1d" * 40  # pointers to themselves, never followed
    assert dc.parse_query(data).has_edns is False
    opt_with_bad_rdlen = hdr(ar=1) + GOOD_Q + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\xff\xff"
    assert dc.parse_query(opt_with_bad_rdlen).has_edns is False


def test_random_bytes_parse_or_raise_format_error():
    rng = random.Random(53)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(0, 300))
        try:
            dc.parse_query(data)
        except dc.DnsFormatError as e:
            assert e.id == (struct.unpack_from("!H", data)[0] if len(data) >= 12 else None)


def test_mutated_queries_parse_or_raise_format_error():
    rng = random.Random(1035)
    parsed = 0
    for i in range(2000):
        kind = i % 4
        if kind == 0:  # pure noise, any length
            data = rng.randbytes(rng.randrange(0, 600))
        elif kind == 1:  # plausible header, random body
            data = H.pack(rng.randrange(65536), rng.choice([0, 0x0100, 0x8000]), 1,
                          rng.randrange(3), rng.randrange(3), rng.randrange(3)) + rng.randbytes(rng.randrange(0, 80))
        elif kind == 2:  # a valid query with random bytes flipped
            data = bytearray(query_bytes(edns=1232 if i % 8 == 2 else None))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        else:  # a valid query cut anywhere
            data = query_bytes(edns=4096)
            data = data[:rng.randrange(len(data) + 1)]
        try:
            query = dc.parse_query(data)
        except dc.DnsFormatError as e:
            assert e.id is None or 0 <= e.id <= 0xFFFF
            if len(data) >= 12:
                assert e.id == struct.unpack_from("!H", data)[0]
        else:
            parsed += 1
            assert isinstance(query.name, str) and len(query.raw_question) >= 5
            dc.answer(query, ["198.19.0.1"], 5)  # builders accept whatever parses
            dc.nxdomain(query, "svc.glasswing")
    assert parsed > 100  # the generator does exercise the success path too


# --- building: exact bytes ---------------------------------------------------------------


def test_formerr_exact_bytes():
    assert dc.formerr(0x1234) == bytes.fromhex("1234 8081 0000 0000 0000 0000")
    assert dc.formerr(None) == bytes.fromhex("0000 8081 0000 0000 0000 0000")
    assert dc.formerr(0) == dc.formerr(None)


def test_answer_exact_bytes():
    query = dc.parse_query(bytes.fromhex("abcd 0100 0001 0000 0000 0000") + GOOD_Q)
    out = dc.answer(query, ["198.19.0.10"], 30)
    assert out == (bytes.fromhex("abcd 8580 0001 0001 0000 0000") + GOOD_Q
                   + bytes.fromhex("c00c 0001 0001 0000001e 0004 c613000a"))


def test_flags_exact():
    base = bytes.fromhex("0001 0000 0001 0000 0000 0000") + GOOD_Q
    query = dc.parse_query(base)  # RD clear
    assert header(dc.answer(query, [], 5))[1] == 0x8480  # QR AA RA
    assert header(dc.nxdomain(query))[1] == 0x8483
    assert header(dc.nodata(query))[1] == 0x8480
    assert header(dc.refused(query))[1] == 0x8085  # not authoritative
    assert header(dc.servfail(query))[1] == 0x8082
    assert header(dc.notimp(query))[1] == 0x8084
    rd_cd = dc.parse_query(bytes.fromhex("0001 0110 0001 0000 0000 0000") + GOOD_Q)
    assert header(dc.refused(rd_cd))[1] == 0x8195  # RD and CD copied
    assert header(dc.answer(query, [], 5, authoritative=False))[1] == 0x8080


def test_responses_echo_question_and_counts():
    query = q("Web.Default.svc.glasswing")
    for out, counts in [(dc.answer(query, ["198.19.0.1", "198.19.0.2"], 7), (1, 2, 0, 0)),
                        (dc.nodata(query), (1, 0, 0, 0)),
                        (dc.nxdomain(query, "svc.glasswing"), (1, 0, 1, 0)),
                        (dc.refused(query), (1, 0, 0, 0)),
                        (dc.servfail(query), (1, 0, 0, 0))]:
        assert header(out)[0] == 0x1234 and header(out)[2:] == counts
        assert out[12:12 + len(query.raw_question)] == query.raw_question


def test_is_response_to_and_with_id():
    query = q("web.example.com")
    upstream = bytes(DNS(id=999, qr=1, rd=1, ra=1, qd=DNSQR(qname="WEB.example.com"),
                         an=DNSRR(rrname="web.example.com", rdata="93.184.216.34")))
    assert dc.is_response_to(upstream, 999, query.raw_question)
    assert not dc.is_response_to(upstream, 998, query.raw_question)
    assert not dc.is_response_to(query_bytes("web.example.com", id=999), 999, query.raw_question)  # not QR
    assert not dc.is_response_to(upstream.replace(b"example", b"exbmple"), 999, query.raw_question)
    assert not dc.is_response_to(upstream[:14], 999, query.raw_question)
    relayed = dc.with_id(upstream, 0x1234)
    assert relayed[:2] == b"\x12\x34" and relayed[2:] == upstream[2:]


# --- building: read back with scapy -------------------------------------------------------


def test_answer_a_read_by_scapy():
    query = q("Web.Default.svc.glasswing", id=0x4242)
    resp = DNS(dc.answer(query, ["198.19.0.10", "198.19.0.11"], 30))
    assert resp.id == 0x4242 and resp.qr == 1 and resp.aa == 1 and resp.rd == 1 and resp.ra == 1
    assert resp.rcode == 0 and resp.tc == 0 and resp.ancount == 2 and resp.arcount == 0
    assert [rr(resp.an, i).rdata for i in range(2)] == ["198.19.0.10", "198.19.0.11"]
    assert {rr(resp.an, i).ttl for i in range(2)} == {30}
    assert rr(resp.an).type == 1 and rr(resp.an).rclass == 1
    assert rr(resp.an).rrname == b"Web.Default.svc.glasswing."
    assert rr(resp.qd).qname == b"Web.Default.svc.glasswing."


def test_answer_uses_compression_pointer():
    query = q("web.default.svc.glasswing")
    out = dc.answer(query, ["198.19.0.10"], 30)
    assert out[12 + len(query.raw_question):][:2] == b"\xc0\x0c"
    assert len(out) == 12 + len(query.raw_question) + 16


def test_any_query_answer():
    resp = DNS(dc.answer(q(qtype="ALL"), ["198.19.0.3"], 5))
    assert rr(resp.an).type == dc.TYPE_A and rr(resp.qd).qtype == dc.TYPE_ANY


def test_nxdomain_with_soa_read_by_scapy():
    query = q("nope.default.svc.glasswing", "AAAA", id=77)
    resp = DNS(dc.nxdomain(query, "svc.glasswing", negative_ttl=9))
    assert resp.id == 77 and resp.rcode == 3 and resp.aa == 1 and resp.ancount == 0 and resp.nscount == 1
    soa = rr(resp.ns)
    assert soa.type == dc.TYPE_SOA and soa.rrname == b"svc.glasswing." and soa.ttl == 9 and soa.minimum == 9
    assert soa.mname == b"svc.glasswing." and soa.rname == b"hostmaster.svc.glasswing."
    # the SOA owner points into the question instead of repeating the zone
    assert b"\x03svc\x09glasswing" not in dc.nxdomain(query, "svc.glasswing")[12 + len(query.raw_question):]


def test_nxdomain_soa_for_a_zone_not_in_the_question():
    resp = DNS(dc.nxdomain(q("x.other"), "svc.glasswing"))
    assert rr(resp.ns).rrname == b"svc.glasswing." and rr(resp.ns).rname == b"hostmaster.svc.glasswing."


def test_nodata_and_plain_nxdomain_read_by_scapy():
    query = q("web.default.svc.glasswing", "AAAA")
    resp = DNS(dc.nodata(query))
    assert resp.rcode == 0 and resp.ancount == 0 and resp.nscount == 0 and resp.aa == 1
    resp = DNS(dc.nodata(query, "svc.glasswing"))
    assert resp.rcode == 0 and resp.nscount == 1 and rr(resp.ns).type == dc.TYPE_SOA
    resp = DNS(dc.nxdomain(query))
    assert resp.rcode == 3 and resp.nscount == 0


def test_refused_servfail_formerr_read_by_scapy():
    query = q("example.com", id=5)
    for out, rcode in [(dc.refused(query), 5), (dc.servfail(query), 2), (dc.notimp(query), 4)]:
        resp = DNS(out)
        assert resp.id == 5 and resp.qr == 1 and resp.rcode == rcode and resp.aa == 0 and resp.ra == 1
        assert rr(resp.qd).qname == b"example.com."
    resp = DNS(dc.formerr(0xBEEF))
    assert resp.id == 0xBEEF and resp.qr == 1 and resp.rcode == 1 and resp.qdcount == 0


def test_edns_response_carries_minimal_opt():
    query = q(edns=4096)
    resp = DNS(dc.answer(query, ["198.19.0.10"], 5))
    assert resp.arcount == 1
    opt = rr(resp.ar)
    assert opt.type == dc.TYPE_OPT and opt.rclass == dc.EDNS_PAYLOAD and opt.version == 0 and opt.rrname == b"."
    assert DNS(dc.nxdomain(query, "svc.glasswing")).arcount == 1
    assert DNS(dc.answer(q(), ["198.19.0.10"], 5)).arcount == 0  # no EDNS in, none out


def test_badvers():
    data = bytes(DNS(id=3, qd=DNSQR(qname="x"), ar=DNSRROPT(rclass=1232, version=1)))
    resp = DNS(dc.badvers(dc.parse_query(data)))
    assert resp.rcode == 0 and rr(resp.ar).extrcode == 1  # (1 << 4) | 0 == 16, BADVERS


def test_answer_gives_aaaa_for_ipv6_addresses():
    resp = DNS(dc.answer(q(qtype="AAAA"), ["2001:2:0:ffff::c613:a", "2001:2:0:ffff::a"], 9))
    assert [(a.type, a.rdata, a.ttl) for a in resp.an] == [(dc.TYPE_AAAA, "2001:2:0:ffff::c613:a", 9),
                                                           (dc.TYPE_AAAA, "2001:2:0:ffff::a", 9)]


def test_truncation_counts_aaaa_records_by_their_size():
    ips = [f"2001:2:0:ffff::{i:x}" for i in range(40)]
    plain = dc.answer(q(qtype="AAAA"), ips, 5)
    assert len(plain) <= 512 and DNS(plain).tc == 1
    assert DNS(plain).ancount == (512 - 12 - len(q(qtype="AAAA").raw_question)) // 28


def test_truncation_to_udp_limit():
    ips = [f"198.19.{i // 256}.{i % 256}" for i in range(100)]
    plain = dc.answer(q(), ips, 5)
    assert len(plain) <= 512 and DNS(plain).tc == 1 and 0 < DNS(plain).ancount < 100
    big = dc.answer(q(edns=4096), ips, 5)
    assert DNS(big).tc == 0 and DNS(big).ancount == 100
    small = dc.answer(q(), ips[:3], 5)
    assert DNS(small).tc == 0


def test_encode_name():
    assert dc.encode_name("svc.glasswing") == b"\x03svc\x09glasswing\x00"
    assert dc.encode_name("svc.glasswing.") == dc.encode_name("svc.glasswing")
    assert dc.encode_name("") == b"\x00"
    with pytest.raises(ValueError):
        dc.encode_name("a" * 64)
    with pytest.raises(ValueError):
        dc.encode_name("a..b")
