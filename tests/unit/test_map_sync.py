"""kernel/map_sync.desired(): what the services and backends maps must hold for dual-stack,
IPv4-only and IPv6-only services and endpoints, read back through the ctypes mirrors.
Each VIP (family) gets its own service id; its backends are the endpoint addresses its
sockets reach (IPv4 ones mapped), and kernel/addrs.py round-trips them."""
import ctypes as C
import socket

import pytest

from dataplane.kernel.addrs import ip16, ip_text, is_ipv6
from dataplane.kernel.map_sync import ServiceIds, desired
from dataplane.kernel.structs import (BackendKey, BackendValue, GW_FAIL_CLOSED, GW_SVC_SOCKET_LB, PodSettings, SvcKey,
                                      SvcValue)
from dataplane.store import registry
from dataplane.store.catalog import Catalog

VIP4, VIP6 = "198.19.0.10", "2001:2:0:ffff::a"


def _doc(vip="", vip6="", endpoints=(), labels=None):
    """One service web (port 80 -> 8080) with the VIPs given and endpoints as
    (pod, ip, ip6) published by node n."""
    doc = {"services": {"default/web": {"namespace": "default", "name": "web", "labels": labels or {},
                                        "vip": vip, "vip6": vip6,
                                        "ports": [{"port": 80, "target": 8080, "protocol": "tcp", "name": ""}],
                                        "selector": {"app": "web"}, "health_check": None}},
           "pods": {}, "endpoints": {}}
    for pod, ip, ip6 in endpoints:
        doc["pods"][pod] = {"node": "n", "ip": ip, "ip6": ip6, "labels": {"app": "web"}}
        doc["endpoints"][f"/glasswing/endpoints/n/default/web/80/{pod}:8080"] = {
            "service": "default/web", "service_port": 80, "pod": pod, "node": "n", "ip": ip, "ip6": ip6,
            "port": 8080, "health": "healthy", "zone": "", "weight": 1}
    return doc


def _maps(doc, cgroup_ids=None, ids=None):
    """{vip text: (SvcValue, [backend (ip text, port) by slot])} and the pods map, from desired()."""
    snapshot = registry.snapshot(doc)
    want = desired(Catalog(snapshot), snapshot, "n", cgroup_ids or {}, ids or ServiceIds())
    backends = {(k.svc_id, k.slot): v for k, v in
                ((BackendKey.from_buffer_copy(kb), BackendValue.from_buffer_copy(vb))
                 for kb, vb in want["backends"].items())}
    out = {}
    for kb, vb in want["services"].items():
        key, val = SvcKey.from_buffer_copy(kb), SvcValue.from_buffer_copy(vb)
        assert (socket.ntohs(key.port), key.proto) == (80, 6)
        eps = [(ip_text(be.ip), socket.ntohs(be.port))
               for be in (backends[(val.svc_id, slot)] for slot in range(val.count))]
        out[ip_text(key.vip)] = (val, eps)
    # every backend entry belongs to a service slot: none left over
    assert len(backends) == sum(v.count for v, _e in out.values())
    return out, want["pods"]


def test_addresses_are_16_bytes_ipv4_mapped():
    assert bytes(ip16("198.19.0.10")) == bytes(10) + b"\xff\xff" + bytes([198, 19, 0, 10])
    assert bytes(ip16("2001:2:0:ffff::a")) == bytes.fromhex("20010002" "0000ffff" "00000000" "0000000a")
    assert ip_text(ip16("198.19.0.10")) == "198.19.0.10"
    assert ip_text(ip16("2001:2:0:ffff:0:0:0:a")) == "2001:2:0:ffff::a"  # compressed, as the catalog keys
    assert is_ipv6("2001:2::1") and not is_ipv6("198.18.0.1") and not is_ipv6("::ffff:198.18.0.1")


def test_dual_stack_service_gets_one_id_per_family_with_that_familys_addresses():
    doc = _doc(VIP4, VIP6, [("a", "198.18.1.2", "2001:2::c612:102"), ("b", "198.18.1.3", ""),
                            ("c", "", "2001:2::c612:104")])
    out, _pods = _maps(doc)
    assert set(out) == {VIP4, VIP6}
    (v4, eps4), (v6, eps6) = out[VIP4], out[VIP6]
    assert v4.svc_id != v6.svc_id
    # the IPv4 VIP: IPv4 addresses only; c (IPv6 only) cannot be reached from an AF_INET socket
    assert eps4 == [("198.18.1.2", 8080), ("198.18.1.3", 8080)]
    # the IPv6 VIP: IPv4 addresses (mapped), which a dual-stack app on 0.0.0.0 answers too; c's
    # IPv6 one as it has no IPv4 address
    assert eps6 == [("198.18.1.2", 8080), ("198.18.1.3", 8080), ("2001:2::c612:104", 8080)]
    assert v4.count == 2 and v6.count == 3


def test_ipv4_only_service_has_no_ipv6_entry():
    out, _pods = _maps(_doc(vip=VIP4, endpoints=[("a", "198.18.1.2", "2001:2::c612:102")]))
    assert list(out) == [VIP4]
    assert out[VIP4][1] == [("198.18.1.2", 8080)]


def test_ipv6_only_service_and_endpoints():
    out, _pods = _maps(_doc(vip6=VIP6, endpoints=[("a", "", "2001:2::c612:102"), ("b", "", "2001:2::c612:103")]))
    assert list(out) == [VIP6]
    assert out[VIP6][1] == [("2001:2::c612:102", 8080), ("2001:2::c612:103", 8080)]


def test_ipv4_vip_of_ipv6_only_endpoints_counts_none():
    """Nothing an AF_INET socket could reach: count 0, so connect4 fails it at once (EPERM)
    instead of translating to an address of the wrong family."""
    out, _pods = _maps(_doc(VIP4, VIP6, [("a", "", "2001:2::c612:102")]))
    assert out[VIP4][0].count == 0 and out[VIP4][1] == []
    assert out[VIP6][1] == [("2001:2::c612:102", 8080)]


def test_ids_stay_stable_and_socket_lb_applies_to_both_families():
    ids = ServiceIds()
    doc = _doc(VIP4, VIP6, [("a", "198.18.1.2", "2001:2::c612:102")], labels={"glasswing.dev/lb": "socket"})
    first, _ = _maps(doc, ids=ids)
    again, _ = _maps(doc, ids=ids)
    assert {v: s.svc_id for v, (s, _e) in first.items()} == {v: s.svc_id for v, (s, _e) in again.items()}
    assert all(s.flags == GW_SVC_SOCKET_LB for s, _e in first.values())


def test_pods_entry_carries_the_fail_mode():
    doc = _doc(VIP4)
    doc["pods"]["p"] = {"node": "n", "ip": "198.18.1.9", "labels": {}, "fail_mode": "closed"}
    doc["pods"]["q"] = {"node": "other", "ip": "198.18.1.10", "labels": {}}
    _out, pods = _maps(doc, cgroup_ids={"p": 7, "q": 8})
    assert pods == {bytes(C.c_uint64(7)): bytes(PodSettings(fail_mode=GW_FAIL_CLOSED))}


@pytest.mark.parametrize("text", ["198.19.0.10", "2001:2:0:ffff::a", "::1"])
def test_round_trip(text):
    assert ip_text(bytes(ip16(text))) == text
