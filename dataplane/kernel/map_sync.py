"""Keeps a node's pinned maps equal to the store, changing only what differs.

Desired contents are computed from the store Snapshot as {key bytes: value
bytes}; applying diffs them against what the maps hold, so a change to one
service touches only its entries and established connections never notice.
"""
import ctypes as C
import os
import socket

from dataplane.kernel.addrs import ip16, is_ipv6
from dataplane.kernel.maps import PinnedMap
from dataplane.kernel.structs import (BackendKey, BackendValue, GW_FAIL_CLOSED, GW_FAIL_OPEN, GW_SVC_SOCKET_LB, GwConfig,
                                      PodSettings, SvcKey, SvcValue)
from dataplane.settings import DNS_PORT, FORWARDER_MARK, OUTBOUND_IP, OUTBOUND_IP6, OUTBOUND_PORT

IPPROTO_TCP = 6


def _n16(port: int) -> int:
    return socket.htons(port)


class ServiceIds:
    """Small stable ids for service ports (one per address family), local to this
    forwarder's maps."""

    def __init__(self):
        self.ids = {}

    def get(self, key) -> int:
        if key not in self.ids:
            self.ids[key] = len(self.ids) + 1
        return self.ids[key]


def reachable(endpoints, v6: bool) -> list:
    """(address text, port) of each endpoint a socket dialling a VIP of that family reaches
    it at: for an IPv4 VIP its IPv4 address (endpoints with only an IPv6 one are left out);
    for an IPv6 VIP its IPv4 address (mapped in the map), or its IPv6 one when it has none.
    The kernel picks these itself (socket LB, fail-open) and cannot try another address as the
    forwarder does when an app refuses: a dual-stack pod's app listening on 0.0.0.0 only (most
    do) is reached at its mapped IPv4 address by an AF_INET6 socket, never at its IPv6 one."""
    if v6:
        return [(ep.ip or ep.ip6, ep.port) for ep in endpoints if ep.ip or ep.ip6]
    return [(ep.ip, ep.port) for ep in endpoints if ep.ip]


def desired(catalog, snapshot, node: str, cgroup_ids: dict, ids: ServiceIds) -> dict:
    """{map name: {key bytes: value bytes}} for services, backends and pods, from a
    catalog and the store Snapshot it was built from (store/snapshot.py).
    Backends (for fail-open translation and socket LB) are the registered healthy
    endpoints. The IPv4 and the IPv6 VIP of a service port get a services entry and a
    service id each, their backends the endpoint addresses of their family (reachable())."""
    services, backends, pods = {}, {}, {}
    for (vip, port), sp in catalog.by_vip.items():
        v6 = is_ipv6(vip)
        sid = ids.get((sp.service, port, 6 if v6 else 4))
        eps = reachable(sp.endpoints, v6)
        key = SvcKey(vip=ip16(vip), port=_n16(port), proto=IPPROTO_TCP)
        services[bytes(key)] = bytes(SvcValue(svc_id=sid, count=len(eps),
                                              flags=GW_SVC_SOCKET_LB if sp.socket_lb else 0))
        for slot, (ip, ep_port) in enumerate(eps):
            backends[bytes(BackendKey(svc_id=sid, slot=slot))] = \
                bytes(BackendValue(ip=ip16(ip), port=_n16(ep_port)))
    for pname, pod in snapshot.pods.items():
        cid = cgroup_ids.get(pname)
        if pod.node == node and cid is not None:
            mode = GW_FAIL_CLOSED if pod.fail_mode == "closed" else GW_FAIL_OPEN
            pods[bytes(C.c_uint64(cid))] = bytes(PodSettings(fail_mode=mode))
    # Backends before services: a service never counts endpoints not yet written.
    return {"backends": backends, "services": services, "pods": pods}


class MapState:
    TYPES = {"services": (SvcKey, SvcValue), "backends": (BackendKey, BackendValue),
             "pods": (C.c_uint64, PodSettings), "config": (C.c_uint32, GwConfig)}

    def __init__(self, pin_dir: str):
        self.maps = {n: PinnedMap(os.path.join(pin_dir, n), *t) for n, t in self.TYPES.items()}
        self.updates = 0
        self.have = {}  # map name -> {key bytes: value bytes} as written

    def set_config(self, fwd_cgroup_id: int) -> None:
        cfg = GwConfig(fwd_cgroup_id=fwd_cgroup_id, mark=FORWARDER_MARK,
                       outbound_port=_n16(OUTBOUND_PORT), dns_port=_n16(DNS_PORT),
                       outbound_ip=ip16(OUTBOUND_IP), outbound_ip6=ip16(OUTBOUND_IP6))
        self.maps["config"].update(C.c_uint32(0), cfg)

    def apply(self, want: dict) -> int:
        """Make the maps hold exactly `want`; returns the number of changed entries.
        What the maps hold is read once, then tracked here, so a change costs
        syscalls only for the entries it touches."""
        changed = 0
        for name, entries in want.items():
            m = self.maps[name]
            kt, vt = m.key_type, m.value_type
            if name not in self.have:
                self.have[name] = {bytes(k): bytes(m.get(k) or b"") for k in m.keys()}
            have = self.have[name]
            for kb, vb in entries.items():
                if have.get(kb) != vb:
                    m.update(kt.from_buffer_copy(kb), vt.from_buffer_copy(vb))
                    have[kb] = vb
                    changed += 1
            for kb in [k for k in have if k not in entries]:
                m.delete(kt.from_buffer_copy(kb))
                del have[kb]
                changed += 1
        self.updates += changed
        return changed

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
