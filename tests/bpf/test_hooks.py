"""The hook programs against the real kernel, without the forwarder: one
network namespace, a pod cgroup and a forwarder cgroup, small processes in
each. Checks connect4 (redirect, fail open, fail closed, mark skip),
sock_ops + getsockopt (SO_ORIGINAL_DST on the accepted socket) and
getpeername4 (the app sees the VIP), DNS steering (sendmsg4, recvmsg4), and
the same for AF_INET6 sockets dialling IPv4-mapped addresses (connect6,
getpeername6, recvmsg6, sock_ops on the mapped connection).

    netns gwbpf-X:  lo 127.0.0.1   (listener 15001 = "forwarder", backend 9000)
    cgroups:        .../pod (app processes)   .../fwd (listener process)
"""
import ctypes as C
import json
import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from dataplane.kernel import maps as bpf_maps
from dataplane.host import cgroups
from dataplane.kernel.hooks import HOOKS
from dataplane.kernel.programs import Programs, attached, detach_stale
from dataplane.kernel.map_sync import MapState, ServiceIds, desired
from dataplane.kernel.structs import (BackendKey, BackendValue, GW_FAIL_CLOSED, GW_SVC_SOCKET_LB, PodSettings,
                                      SvcKey, SvcValue)
from dataplane.store import registry
from dataplane.store.catalog import Catalog
from lab.cluster import pod_preexec
from tests.support.need import need_root_and_bpf

VIP, PORT = "198.19.77.7", 80


def n32(ip):
    return int.from_bytes(socket.inet_aton(ip), "little")


@pytest.fixture
def world():
    need_root_and_bpf()
    tag = secrets.token_hex(3)
    ns = f"gwbpf-{tag}"
    base = os.path.join(cgroups.cgroup2_root(), f"gwbpftest-{tag}")
    pin = f"/sys/fs/bpf/glasswing/bpftest-{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
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


LISTEN = """
import socket, struct, sys, json
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(16); print("ready", flush=True)
while True:
    c, peer = l.accept()
    try:
        raw = c.getsockopt(socket.SOL_IP, 80, 16)
        fam, port = struct.unpack_from("=H", raw)[0], struct.unpack_from("!H", raw, 2)[0]
        orig = [socket.inet_ntoa(raw[4:8]), port, fam]
    except OSError as e:
        orig = ["error", e.errno]
    c.sendall((json.dumps({"orig": orig, "who": sys.argv[1]}) + "\\n").encode()); c.close()
"""

CONNECT = """
import socket, sys, json
s = socket.socket()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    out = {"peer": list(s.getpeername()), "reply": json.loads(s.makefile().readline())}
except OSError as e:
    out = {"error": e.errno}
print(json.dumps(out))
"""


def add_service(world, backend_ip="127.0.0.1", backend_port=9000):
    want = {"backends": {bytes(BackendKey(svc_id=1, slot=0)):
                         bytes(BackendValue(ip=n32(backend_ip), port=socket.htons(backend_port)))},
            "services": {bytes(SvcKey(vip=n32(VIP), port=socket.htons(PORT), proto=6)):
                         bytes(SvcValue(svc_id=1, count=1))},
            "pods": {}}
    return world["maps"].apply(want)


def listen(world, cgroup, port):
    p = run_in(world, cgroup, LISTEN, port, background=True)
    assert p.stdout.readline().strip() == "ready"


def test_programs_attached_to_the_right_cgroups(world):
    on_pod = sorted(t for _i, t, _n in attached(world["pod"]))
    on_fwd = sorted(t for _i, t, _n in attached(world["fwd"]))
    assert on_pod == sorted(h.bpftool_type for h in HOOKS if h.on_pods)
    assert on_fwd == sorted(h.bpftool_type for h in HOOKS if h.on_forwarder)
    assert sorted(os.listdir(world["pin"])) == sorted(bpf_maps.MAP_NAMES)


def test_redirect_original_dst_and_peername(world):
    add_service(world)
    listen(world, "fwd", 15001)
    out = run_in(world, "pod", CONNECT, VIP, PORT)
    assert out["reply"]["who"] == "15001"                      # connect4 redirected
    assert out["reply"]["orig"] == [VIP, PORT, socket.AF_INET]  # sock_ops + getsockopt
    assert out["peer"] == [VIP, PORT]                           # getpeername4


def test_other_destinations_untouched(world):
    add_service(world)
    listen(world, "fwd", 15001)
    listen(world, "fwd", 9000)
    out = run_in(world, "pod", CONNECT, "127.0.0.1", 9000)
    assert out["reply"]["who"] == "9000" and out["peer"] == ["127.0.0.1", 9000]
    assert out["reply"]["orig"][0] == "error"  # no record: getsockopt falls through to the kernel


def test_fail_open_translates_in_kernel(world):
    add_service(world)
    listen(world, "fwd", 9000)  # the endpoint; no forwarder listener on 15001
    out = run_in(world, "pod", CONNECT, VIP, PORT)
    assert out["reply"]["who"] == "9000"
    assert out["peer"] == [VIP, PORT]


def test_fail_closed_refuses_at_once(world):
    add_service(world)
    world["maps"].maps["pods"].update(C.c_uint64(cgroups.cgroup_id(world["pod"])),
                                      PodSettings(fail_mode=GW_FAIL_CLOSED))
    listen(world, "fwd", 9000)
    t = time.monotonic()
    out = run_in(world, "pod", CONNECT, VIP, PORT)
    assert out == {"error": 1}  # EPERM
    assert time.monotonic() - t < 5


def test_forwarder_cgroup_is_never_redirected(world):
    add_service(world, backend_ip="127.0.0.1", backend_port=9000)
    listen(world, "fwd", 15001)
    out = run_in(world, "fwd", CONNECT, VIP, PORT)
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


UDP_RESPONDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 15053)); print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"answer:" + data, peer)
"""

DNS_CLIENT = """
import socket, sys, json
server = (sys.argv[1], 53)
out = {}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"q1", server)
data, src = s.recvfrom(2048)
out["sendto"] = [data.decode(), list(src)]
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(2)
c.connect(server); c.send(b"q2")
data, src = c.recvfrom(2048)
out["connected"] = [data.decode(), list(src), list(c.getpeername())]
print(json.dumps(out))
"""

NAMESERVER = "198.18.250.53"  # inside the benchmarking range; nothing is there


def test_dns_steered_to_resolver_and_answers_come_from_the_server_asked(world):
    p = run_in(world, "fwd", UDP_RESPONDER, background=True)
    assert p.stdout.readline().strip() == "ready"
    out = run_in(world, "pod", DNS_CLIENT, NAMESERVER)
    assert out["sendto"] == ["answer:q1", [NAMESERVER, 53]]
    assert out["connected"] == ["answer:q2", [NAMESERVER, 53], [NAMESERVER, 53]]


def test_dns_untouched_without_resolver(world):
    code = ("import socket, sys\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "try:\n    s.sendto(b'q', (sys.argv[1], 53)); print('{\"sent\": true}')\n"
            "except OSError as e:\n    print('{\"errno\": %d}' % e.errno)\n")
    out = run_in(world, "pod", code, NAMESERVER)
    assert out == {"errno": 101}  # ENETUNREACH: left alone, and this namespace has no route


# ---- AF_INET6 sockets dialling IPv4-mapped addresses (::ffff:a.b.c.d), as the JVM and
# gRPC C-core do: connect6, getpeername6, recvmsg6 (sendmsg4 runs for a mapped sendto),
# and sock_ops publishing the mapped connection under its IPv4 tuple.

CONNECT6 = """
import socket, sys, json
s = socket.socket(socket.AF_INET6)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    out = {"peer": list(s.getpeername())[:2], "reply": json.loads(s.makefile().readline())}
except OSError as e:
    out = {"error": e.errno}
print(json.dumps(out))
"""

MAPPED_VIP = "::ffff:" + VIP


def test_mapped_connect_redirected_with_original_dst_and_peername(world):
    add_service(world)
    listen(world, "fwd", 15001)  # an AF_INET listener: it accepts ::ffff:127.0.0.1
    out = run_in(world, "pod", CONNECT6, MAPPED_VIP, PORT)
    assert out["reply"]["who"] == "15001"                      # connect6 redirected
    assert out["reply"]["orig"] == [VIP, PORT, socket.AF_INET]  # sock_ops (mapped tuple) + getsockopt
    assert out["peer"] == [MAPPED_VIP, PORT]                    # getpeername6


def test_mapped_socket_lb_translates_even_with_a_forwarder(world):
    add_service(world)
    key = SvcKey(vip=n32(VIP), port=socket.htons(PORT), proto=6)
    world["maps"].maps["services"].update(key, SvcValue(svc_id=1, count=1, flags=GW_SVC_SOCKET_LB))
    listen(world, "fwd", 15001)
    listen(world, "fwd", 9000)
    out = run_in(world, "pod", CONNECT6, MAPPED_VIP, PORT)
    assert out["reply"]["who"] == "9000"
    assert out["reply"]["orig"][0] == "error"  # translated in the kernel: no record for the endpoint
    assert out["peer"] == [MAPPED_VIP, PORT]


def test_mapped_fail_open_translates_in_kernel(world):
    add_service(world)
    listen(world, "fwd", 9000)  # the endpoint; no forwarder listener on 15001
    out = run_in(world, "pod", CONNECT6, MAPPED_VIP, PORT)
    assert out["reply"]["who"] == "9000"
    assert out["peer"] == [MAPPED_VIP, PORT]


def test_mapped_fail_closed_refuses_at_once(world):
    add_service(world)
    world["maps"].maps["pods"].update(C.c_uint64(cgroups.cgroup_id(world["pod"])),
                                      PodSettings(fail_mode=GW_FAIL_CLOSED))
    listen(world, "fwd", 9000)
    out = run_in(world, "pod", CONNECT6, MAPPED_VIP, PORT)
    assert out == {"error": 1}  # EPERM, not a timeout


LISTEN6 = """
import socket, sys
l = socket.socket(socket.AF_INET6); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("::1", int(sys.argv[1]))); l.listen(16); print("ready", flush=True)
while True:
    c, peer = l.accept(); c.sendall(b'{"who": "v6"}\\n'); c.close()
"""


def test_native_ipv6_destination_untouched(world):
    add_service(world)
    listen(world, "fwd", 15001)
    p = run_in(world, "fwd", LISTEN6, PORT, background=True)
    assert p.stdout.readline().strip() == "ready"
    out = run_in(world, "pod", CONNECT6, "::1", PORT)  # same port as the service: only the family differs
    assert out == {"peer": ["::1", PORT], "reply": {"who": "v6"}}


DNS6_CLIENT = """
import socket, sys, json
server = (sys.argv[1], 53)
out = {}
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(b"q1", server)
data, src = s.recvfrom(2048)
out["sendto"] = [data.decode(), list(src)[:2]]
c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); c.settimeout(2)
c.connect(server); c.send(b"q2")
data, src = c.recvfrom(2048)
out["connected"] = [data.decode(), list(src)[:2], list(c.getpeername())[:2]]
print(json.dumps(out))
"""


def test_dns_over_af_inet6_to_a_mapped_server_steered_and_source_restored(world):
    p = run_in(world, "fwd", UDP_RESPONDER, background=True)  # AF_INET on 127.0.0.1:15053
    assert p.stdout.readline().strip() == "ready"
    mapped = "::ffff:" + NAMESERVER
    out = run_in(world, "pod", DNS6_CLIENT, mapped)
    assert out["sendto"] == ["answer:q1", [mapped, 53]]          # sendmsg4 + recvmsg6
    assert out["connected"] == ["answer:q2", [mapped, 53], [mapped, 53]]  # connect6 + recvmsg6 + getpeername6


def test_dns_to_a_native_ipv6_server_untouched(world):
    p = run_in(world, "fwd", UDP_RESPONDER, background=True)
    assert p.stdout.readline().strip() == "ready"
    code = ("import socket, sys, json\n"
            "out = {}\n"
            "for how in ('sendto', 'connect'):\n"
            "    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            "    try:\n"
            "        s.sendto(b'q', (sys.argv[1], 53)) if how == 'sendto' else s.connect((sys.argv[1], 53))\n"
            "        out[how] = 'sent'\n"
            "    except OSError as e:\n"
            "        out[how] = e.errno\n"
            "print(json.dumps(out))\n")
    out = run_in(world, "pod", code, "2001:db8::53")
    assert out == {"sendto": 101, "connect": 101}  # ENETUNREACH: left alone, no IPv6 route here
