"""The hook programs against the real kernel, without the forwarder: one
network namespace, a pod cgroup and a forwarder cgroup, small processes in
each. Every behaviour runs three ways (the `fam` fixture): an AF_INET socket
dialling the IPv4 VIP (connect4, getpeername4, sendmsg4, recvmsg4), an
AF_INET6 socket dialling it IPv4-mapped (::ffff:VIP: connect6, getpeername6,
recvmsg6, sendmsg4 for a mapped sendto) and an AF_INET6 socket dialling the
IPv6 VIP natively (connect6, getpeername6, sendmsg6, recvmsg6). Covered:
redirect to the forwarder of that family with sock_ops + getsockopt handing
the original destination to the accepted socket (SO_ORIGINAL_DST, or
IP6T_SO_ORIGINAL_DST on an AF_INET6 one, read by host.sockets.original_dst),
other destinations untouched, fail open, fail closed, socket LB, the
forwarder's own cgroup skipped, DNS steering and the answer's source.

    netns gwbpf-X:  lo 127.0.0.1 and ::1 (listeners 15001 = "forwarder" and
                    9000 = endpoint, on the family's address; resolver 15053)
    cgroups:        .../pod (app processes)   .../fwd (listener processes)
"""
import ctypes as C
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from dataplane.kernel import maps as bpf_maps
from dataplane.host import cgroups
from dataplane.kernel.addrs import ip16
from dataplane.kernel.hooks import HOOKS
from dataplane.kernel.programs import Programs, attached, detach_stale
from dataplane.kernel.map_sync import MapState, ServiceIds, desired
from dataplane.kernel.structs import (BackendKey, BackendValue, GW_FAIL_CLOSED, GW_SVC_SOCKET_LB, PodSettings,
                                      SvcKey, SvcValue)
from dataplane.store import registry
from dataplane.store.catalog import Catalog
from lab.cluster import pod_preexec
from tests.support.need import need_root_and_bpf

VIP, VIP6, PORT = "198.19.77.7", "2001:2:0:ffff::77", 80
NAMESERVER, NAMESERVER6 = "198.18.250.53", "2001:db8::53"  # nothing is there


@dataclass(frozen=True)
class Family:
    name: str
    af: int          # the app's socket family
    vip: str         # what the app dials (and sees as its peer)
    vip_key: str     # the VIP whose map entry that finds, as original_dst reports it
    local: str       # an address in the namespace, as the app's socket spells it
    listen_ip: str   # where the forwarder's (and the endpoint's) sockets for it are bound
    nameserver: str  # a DNS server as the app's socket spells it


FAMILIES = (
    Family("v4", socket.AF_INET, VIP, VIP, "127.0.0.1", "127.0.0.1", NAMESERVER),
    Family("mapped", socket.AF_INET6, "::ffff:" + VIP, VIP, "::ffff:127.0.0.1", "127.0.0.1", "::ffff:" + NAMESERVER),
    Family("v6", socket.AF_INET6, VIP6, VIP6, "::1", "::1", NAMESERVER6),
)


@pytest.fixture(params=FAMILIES, ids=lambda f: f.name)
def fam(request):
    return request.param


@pytest.fixture
def world():
    need_root_and_bpf()
    tag = secrets.token_hex(3)
    ns = f"gwbpf-{tag}"
    base = os.path.join(cgroups.cgroup2_root(), f"gwbpftest-{tag}")
    pin = f"/sys/fs/bpf/glasswing/bpftest-{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    # IPv6 on lo (::1), whatever this machine's defaults for new namespaces are
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    pod, fwd = os.path.join(base, "pod"), os.path.join(base, "fwd")
    os.makedirs(pod)
    os.makedirs(fwd)
    progs, maps, procs = Programs(pin), None, []
    try:
        progs.load()
        maps = MapState(pin)
        maps.set_config(cgroups.cgroup_id(fwd))
        progs.attach(pod, "pod")
        progs.attach(fwd, "forwarder")
        yield {"ns": ns, "pod": pod, "fwd": fwd, "progs": progs, "maps": maps, "procs": procs, "pin": pin}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        progs.close()
        if maps:
            maps.close()
        bpf_maps.unpin_all(pin)
        cgroups.remove(base)
        subprocess.run(["ip", "netns", "delete", ns])
    assert not os.path.exists(pin)
    assert not any(name.startswith("gw_") for _i, _t, name in attached(cgroups.cgroup2_root()))


def run_in(world, cgroup, code, *args, background=False):
    argv = [sys.executable, "-c", code, *map(str, args)]
    pre = pod_preexec({"cgroup": world[cgroup], "netns": world["ns"]})
    if background:
        p = subprocess.Popen(argv, preexec_fn=pre, stdout=subprocess.PIPE, text=True)
        world["procs"].append(p)
        return p
    r = subprocess.run(argv, preexec_fn=pre, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# A listener on ip:port (IPV6_V6ONLY for an IPv6 ip, as the forwarder's): tells each client
# its port, the family of the accepted socket and the original destination read from it.
LISTEN = """
import socket, sys, json
from dataplane.host.sockets import original_dst
ip, port = sys.argv[1], int(sys.argv[2])
l = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if l.family == socket.AF_INET6:
    l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
l.bind((ip, port)); l.listen(16); print("ready", flush=True)
while True:
    c, peer = l.accept()
    orig = original_dst(c)
    c.sendall((json.dumps({"orig": list(orig) if orig else None, "who": port, "family": c.family}) + "\\n").encode())
    c.close()
"""

CONNECT = """
import socket, sys, json
s = socket.socket(int(sys.argv[1]))
try:
    s.connect((sys.argv[2], int(sys.argv[3])))
    out = {"peer": list(s.getpeername())[:2], "reply": json.loads(s.makefile().readline())}
except OSError as e:
    out = {"error": e.errno}
print(json.dumps(out))
"""


def connect(world, fam, ip, port=PORT, cgroup="pod"):
    return run_in(world, cgroup, CONNECT, fam.af, ip, port)


def add_service(world, vip, backend_ip, backend_port=9000, flags=0):
    """Service vip:PORT with one endpoint, written straight into the maps."""
    want = {"backends": {bytes(BackendKey(svc_id=1, slot=0)):
                         bytes(BackendValue(ip=ip16(backend_ip), port=socket.htons(backend_port)))},
            "services": {bytes(SvcKey(vip=ip16(vip), port=socket.htons(PORT), proto=6)):
                         bytes(SvcValue(svc_id=1, count=1, flags=flags))},
            "pods": {}}
    return world["maps"].apply(want)


def listen(world, cgroup, ip, port):
    p = run_in(world, cgroup, LISTEN, ip, port, background=True)
    assert p.stdout.readline().strip() == "ready"


def fail_closed(world):
    world["maps"].maps["pods"].update(C.c_uint64(cgroups.cgroup_id(world["pod"])),
                                      PodSettings(fail_mode=GW_FAIL_CLOSED))


def test_programs_attached_to_the_right_cgroups(world):
    on_pod = sorted(t for _i, t, _n in attached(world["pod"]))
    on_fwd = sorted(t for _i, t, _n in attached(world["fwd"]))
    assert on_pod == sorted(h.bpftool_type for h in HOOKS if h.on_pods)
    assert on_fwd == sorted(h.bpftool_type for h in HOOKS if h.on_forwarder)
    assert sorted(os.listdir(world["pin"])) == sorted(bpf_maps.MAP_NAMES)


def test_redirect_original_dst_and_peername(world, fam):
    add_service(world, fam.vip_key, fam.listen_ip)
    listen(world, "fwd", "127.0.0.1", 15001)
    listen(world, "fwd", "::1", 15001)
    out = connect(world, fam, fam.vip)
    reply = out["reply"]
    # connect4/6 sent it to the forwarder's socket of its family: AF_INET for v4 and mapped
    assert (reply["who"], reply["family"]) == (15001, socket.AF_INET6 if fam.name == "v6" else socket.AF_INET)
    assert reply["orig"] == [fam.vip_key, PORT]  # sock_ops + getsockopt (IP6T_SO_ORIGINAL_DST for v6)
    assert out["peer"] == [fam.vip, PORT]        # getpeername4/6


def test_other_destinations_untouched(world, fam):
    add_service(world, fam.vip_key, fam.listen_ip)
    listen(world, "fwd", fam.listen_ip, 15001)
    listen(world, "fwd", fam.listen_ip, 9000)
    out = connect(world, fam, fam.local, 9000)
    assert out["reply"]["who"] == 9000 and out["peer"] == [fam.local, 9000]
    assert out["reply"]["orig"] is None  # no record: getsockopt falls through to the kernel


def test_fail_open_translates_in_kernel(world, fam):
    add_service(world, fam.vip_key, fam.listen_ip)
    listen(world, "fwd", fam.listen_ip, 9000)  # the endpoint; no forwarder listener on 15001
    out = connect(world, fam, fam.vip)
    assert out["reply"]["who"] == 9000
    assert out["peer"] == [fam.vip, PORT]


def test_fail_open_ignores_the_other_familys_forwarder(world, fam):
    """The forwarder is looked up in the destination's family: with only the other family's
    listener up, the connect fails open to the endpoint."""
    add_service(world, fam.vip_key, fam.listen_ip)
    listen(world, "fwd", "127.0.0.1" if fam.name == "v6" else "::1", 15001)
    listen(world, "fwd", fam.listen_ip, 9000)
    assert connect(world, fam, fam.vip)["reply"]["who"] == 9000


def test_fail_closed_refuses_at_once(world, fam):
    add_service(world, fam.vip_key, fam.listen_ip)
    fail_closed(world)
    listen(world, "fwd", fam.listen_ip, 9000)
    t = time.monotonic()
    out = connect(world, fam, fam.vip)
    assert out == {"error": 1}  # EPERM, not a timeout
    assert time.monotonic() - t < 5


def test_socket_lb_translates_even_with_a_forwarder(world, fam):
    add_service(world, fam.vip_key, fam.listen_ip, flags=GW_SVC_SOCKET_LB)
    listen(world, "fwd", fam.listen_ip, 15001)
    listen(world, "fwd", fam.listen_ip, 9000)
    out = connect(world, fam, fam.vip)
    assert out["reply"]["who"] == 9000
    assert out["reply"]["orig"] is None  # translated in the kernel: no record for the endpoint
    assert out["peer"] == [fam.vip, PORT]


def test_ipv6_vip_reaches_an_endpoint_without_ipv6_through_its_mapped_address(world):
    """map_sync puts an endpoint with no IPv6 address behind an IPv6 VIP as ::ffff:IPv4:
    a native connect6 is translated to it (socket LB), and the app still sees the VIP."""
    v6 = FAMILIES[2]
    add_service(world, VIP6, "127.0.0.1", flags=GW_SVC_SOCKET_LB)
    listen(world, "fwd", "127.0.0.1", 9000)
    out = connect(world, v6, VIP6)
    assert (out["reply"]["who"], out["reply"]["family"]) == (9000, socket.AF_INET)
    assert out["peer"] == [VIP6, PORT]


def test_ipv4_vip_never_translated_to_an_ipv6_address(world):
    """An AF_INET socket cannot reach an IPv6 endpoint: connect4 fails it (EPERM) rather
    than write a wrong address (map_sync never writes one; this is the kernel's guard)."""
    add_service(world, VIP, "::1", flags=GW_SVC_SOCKET_LB)
    listen(world, "fwd", "::1", 9000)
    assert connect(world, FAMILIES[0], VIP) == {"error": 1}


def test_forwarder_cgroup_is_never_redirected(world, fam):
    add_service(world, fam.vip_key, fam.listen_ip)
    listen(world, "fwd", fam.listen_ip, 15001)
    out = connect(world, fam, fam.vip, cgroup="fwd")
    assert "error" in out  # not redirected: the VIP has no route in this namespace


def _endpoint(doc, svc, pod, port):
    """Publish pod:port as an endpoint of port 80 of service svc, the way
    the node's forwarder does (node.publisher.Publisher.publish); returns its key."""
    key = f"/glasswing/endpoints/n/default/{svc}/80/{pod}:{port}"
    doc["endpoints"][key] = {"service": f"default/{svc}", "service_port": 80, "pod": pod, "node": "n",
                             "ip": doc["pods"][pod]["ip"], "port": port, "health": "healthy",
                             "zone": "", "weight": 1}
    return key


def test_map_updates_are_incremental(world):
    maps, ids = world["maps"], ServiceIds()  # one ServiceIds for the maps' lifetime, as in the forwarder

    def apply(doc, cgroup_ids):
        snapshot = registry.snapshot(doc)
        return maps.apply(desired(Catalog(snapshot), snapshot, "n", cgroup_ids, ids))

    doc = {"services": {}, "pods": {}, "endpoints": {}}
    assert apply(doc, {}) == 0
    doc["pods"] = {"a": {"node": "n", "ip": "198.18.1.2", "labels": {}}}
    doc["services"] = {f"default/s{i}": {"namespace": "default", "name": f"s{i}", "labels": {},
                                         "vip": f"198.19.0.{10 + i}",
                                         "ports": [{"port": 80, "target": 8080, "protocol": "tcp", "name": ""}],
                                         "endpoints": [{"pod": "a", "port": None, "address": None, "weight": 1,
                                                        "zone": "", "labels": {}}],
                                         "selector": None, "health_check": None}
                       for i in range(1, 6)}
    eps = {i: _endpoint(doc, f"s{i}", "a", 8080) for i in range(1, 6)}
    # 5 services entries (one per VIP:80) + 5 backends (slot 0 of each) + 1 pods entry (a's cgroup)
    assert apply(doc, {"a": 1}) == 5 + 5 + 1
    assert apply(doc, {"a": 1}) == 0
    # s3's target port moves to 9090: its forwarder withdraws a:8080 and publishes a:9090 (the
    # port is part of the key). Only s3's backend slot 0 changes value; its services entry keeps
    # the same id and count, so: 1.
    doc["services"]["default/s3"]["ports"][0]["target"] = 9090
    del doc["endpoints"][eps[3]]
    eps[3] = _endpoint(doc, "s3", "a", 9090)
    assert apply(doc, {"a": 1}) == 1  # one backend
    # s5 goes: its services entry and its backend go (its endpoint, not yet withdrawn, names a
    # service that no longer exists and is ignored)
    del doc["services"]["default/s5"]
    assert apply(doc, {"a": 1}) == 2  # its service and backend
    del doc["endpoints"][eps[5]]
    assert apply(doc, {"a": 1}) == 0  # withdrawing that orphan endpoint changes no map entry


def test_stale_programs_detached_by_a_new_owner(world):
    first = world["progs"]
    second = Programs(world["pin"])
    second.load()
    try:
        second.attach(world["pod"], "pod")  # replaces first's programs on the pod cgroup
        ids = {i for i, _t, _n in attached(world["pod"])}
        assert ids and ids <= second.prog_ids() and not ids & first.prog_ids()
    finally:
        second.close()
    assert attached(world["pod"]) == []
    assert detach_stale(world["fwd"]) == 2  # first's, left on fwd, as after a crash
    assert attached(world["fwd"]) == []


RESPONDER = """
import socket, sys
ip = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
if s.family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind((ip, 15053)); print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"answer:" + data, peer)
"""

DNS_CLIENT = """
import socket, sys, json
af, server = int(sys.argv[1]), (sys.argv[2], 53)
out = {}
s = socket.socket(af, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"q1", server)
data, src = s.recvfrom(2048)
out["sendto"] = [data.decode(), list(src)[:2]]
c = socket.socket(af, socket.SOCK_DGRAM); c.settimeout(2)
c.connect(server); c.send(b"q2")
data, src = c.recvfrom(2048)
out["connected"] = [data.decode(), list(src)[:2], list(c.getpeername())[:2]]
print(json.dumps(out))
"""


def resolver(world, ip):
    p = run_in(world, "fwd", RESPONDER, ip, background=True)
    assert p.stdout.readline().strip() == "ready"


def test_dns_steered_to_resolver_and_answers_come_from_the_server_asked(world, fam):
    """sendto: sendmsg4 (v4, and mapped: the kernel runs it for a mapped sendto) or sendmsg6
    (v6); connected: connect4/6; the answer's source and the peer: recvmsg4/6, getpeername4/6."""
    resolver(world, fam.listen_ip)
    out = run_in(world, "pod", DNS_CLIENT, fam.af, fam.nameserver)
    server = [fam.nameserver, 53]
    assert out["sendto"] == ["answer:q1", server]
    assert out["connected"] == ["answer:q2", server, server]


def test_dns_untouched_without_a_resolver_of_its_family(world, fam):
    resolver(world, "::1" if fam.listen_ip == "127.0.0.1" else "127.0.0.1")  # only the other family's
    code = ("import socket, sys, json\n"
            "out = {}\n"
            "for how in ('sendto', 'connect'):\n"
            "    s = socket.socket(int(sys.argv[1]), socket.SOCK_DGRAM)\n"
            "    try:\n"
            "        s.sendto(b'q', (sys.argv[2], 53)) if how == 'sendto' else s.connect((sys.argv[2], 53))\n"
            "        out[how] = 'sent'\n"
            "    except OSError as e:\n"
            "        out[how] = e.errno\n"
            "print(json.dumps(out))\n")
    out = run_in(world, "pod", code, fam.af, fam.nameserver)
    assert out == {"sendto": 101, "connect": 101}  # ENETUNREACH: left alone, and this namespace has no route
