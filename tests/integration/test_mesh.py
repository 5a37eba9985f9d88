"""An unmodified app in a pod reaches services on its node and on the other
node through the forwarders, sees the VIP as its peer, and the server sees a
mesh connection (from 127.0.0.6, the forwarder inside its pod)."""
import json
import sys
import time

import pytest

from dataplane.relay import modes as relay_modes
from dataplane.tunnel import codec as tc

from tests.support.mesh import client


def curl(lab, url, pod="client"):
    r = lab.run(pod, ["curl", "-sS", "-m", "5", url])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_curl_reaches_both_nodes_round_robin(mesh):
    seen = [curl(mesh, f"http://{mesh.vips['web']}/") for _ in range(6)]
    assert {s["pod"] for s in seen} == {"web1", "web2"}
    assert all(s["peer"] == "127.0.0.6" for s in seen)


def test_raw_tcp_same_node(mesh):
    r = client(mesh, mesh.vips["near"], 7000, size=3_000_000)
    assert r.get("error") is None, r
    assert r["peername"] == [mesh.vips["near"], 7000]
    assert r["greeting"] == ["web1", "127.0.0.6"]
    assert r["received"] == r["sent"] == 3_000_000 and r["same"]


def test_raw_tcp_other_node_through_tunnel(mesh):
    r = client(mesh, mesh.vips["far"], 7000, size=3_000_000)
    assert r.get("error") is None, r
    assert r["peername"] == [mesh.vips["far"], 7000]
    assert r["greeting"] == ["web2", "127.0.0.6"]
    assert r["received"] == r["sent"] == 3_000_000 and r["same"]


def test_small_and_empty_payloads(mesh):
    for size in (0, 1, 65537):
        r = client(mesh, mesh.vips["far"], 7000, size=size)
        assert r.get("error") is None and r["received"] == size and r["same"], r


@pytest.mark.parametrize("mode", sorted(relay_modes.MODES, key=lambda m: m == relay_modes.default()))  # default last
def test_every_relay_mode_carries_bytes_exactly(mesh, mode):
    for node in ("n1", "n2"):
        assert mesh.admin(node, "relay", mode=mode)["relay"] == mode
    for svc in ("near", "far"):
        for size in (0, 1, 65537, 2_000_003):
            r = client(mesh, mesh.vips[svc], 7000, size=size)
            assert r.get("error") is None and r["received"] == size and r["same"], (svc, size, r)
    st = mesh.admin("n1", "status")
    assert st["pipes"]["lent"] == 0  # finished connections gave their pipes back


def test_relay_mode_typo_is_refused(mesh):
    before = mesh.admin("n1", "status")["relay"]
    r = mesh.admin("n1", "relay", mode="sockmapp")
    assert not r["ok"] and "sockmapp" in r["error"]
    assert mesh.admin("n1", "status")["relay"] == before


def test_iperf3_through_mesh(mesh):
    for svc in ("iperf-near", "iperf-far"):
        r = mesh.run("client", ["iperf3", "-J", "-c", mesh.vips[svc], "-t", "2"], timeout=60)
        assert r.returncode == 0, r.stdout[-500:]
        bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
        assert bps > 100e6, f"{svc}: {bps / 1e9:.2f} Gbit/s"


def test_service_without_endpoint_resets_within_a_second(mesh):
    r = client(mesh, mesh.vips["empty"], 80)
    assert r.get("error") in ("ConnectionResetError", "ConnectionRefusedError") or r.get("greeting") == [], r
    assert r["seconds"] < 1.0, r


def test_rejected_tunnel_stream_resets_the_app(mesh):
    # web2 has nothing on 7100: n2 answers StreamReject(refused_by_app), n1 resets the app.
    r = client(mesh, mesh.vips["dead-far"], 7100)
    assert r.get("error") in ("ConnectionResetError",) or r.get("greeting") == [], r
    assert r["seconds"] < 1.0, r
    st = mesh.ctl("n2").status()
    assert st["stats"]["rejected"] >= 1


def _tunnel_probe(mesh, payload_hex, wait):
    """From the client pod, write bytes to n2's tunnel port; report what comes back."""
    code = (
        "import socket, sys, time, json\n"
        "s = socket.create_connection((sys.argv[1], 15008), 3)\n"
        "s.sendall(bytes.fromhex(sys.argv[2]))\n"
        "s.settimeout(float(sys.argv[3])); t = time.monotonic(); data = b''\n"
        "try:\n"
        "    while True:\n"
        "        c = s.recv(4096)\n"
        "        if not c: break\n"
        "        data += c\n"
        "except OSError as e: data += b''\n"
        "print(json.dumps({'reply': data.hex(), 'seconds': time.monotonic() - t}))\n")
    node_ip = mesh.doc["nodes"]["n2"]["ip"]
    r = mesh.run("client", [sys.executable, "-c", code, node_ip, payload_hex, str(wait)])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    reader = tc.PreambleReader("reply")
    return reader.feed(bytes.fromhex(out["reply"])), out["seconds"]


def test_malformed_preamble_is_rejected_and_others_still_served(mesh):
    garbage = (b"\x05hello" + b"\xff" * 10).hex()
    ev, secs = _tunnel_probe(mesh, garbage, 5)
    assert isinstance(ev, tc.Reject) and ev.reason == "malformed", ev
    oversized = (b"\xff\xff\x7f" + b"x" * 10).hex()  # declares ~2 MB
    ev, _ = _tunnel_probe(mesh, oversized, 5)
    assert isinstance(ev, tc.Reject) and ev.reason == "malformed", ev
    assert curl(mesh, f"http://{mesh.vips['web']}/")["peer"] == "127.0.0.6"


def test_slow_preamble_is_cut_off_without_hurting_others(mesh):
    import threading
    result = {}
    t = threading.Thread(target=lambda: result.update(zip(("ev", "secs"), _tunnel_probe(mesh, "0a", 10))))
    t.start()
    time.sleep(0.3)  # the input: the slow preamble's stream opens first
    for _ in range(4):  # meanwhile, real streams through n2 work
        assert client(mesh, mesh.vips["far"], 7000, size=1000)["same"]
    t.join()
    assert isinstance(result["ev"], tc.Reject) and result["ev"].reason == "malformed"
    assert 2.0 < result["secs"] < 6.0, result


def test_version_mismatch_rejected(mesh):
    msg = tc.Open(version=tc.VERSION, source_pod="x", source_identity="x", service="default/far", port=7000,
                  original_dst=tc.Address(mesh.vips["far"], 7000),
                  target=tc.Address(mesh.ips["web2"], 7000), trace_id="t", source_node="n1")
    from dataplane.proto import tunnel_pb2
    raw = tc.encode_open(msg)
    # re-encode with version 99
    body = tunnel_pb2.StreamOpen()
    body.ParseFromString(raw[1:] if raw[0] < 0x80 else raw[2:])
    body.version = 99
    data = body.SerializeToString()
    ev, _ = _tunnel_probe(mesh, (bytes([len(data)]) + data).hex(), 5)
    assert isinstance(ev, tc.Reject) and ev.reason == "version", ev


def test_unknown_service_on_tunnel(mesh):
    msg = tc.Open(version=tc.VERSION, source_pod="x", source_identity="x", service="nope", port=1,
                  original_dst=tc.Address("198.19.9.9", 1), target=tc.Address(mesh.ips["web2"], 7000),
                  trace_id="t", source_node="n1")
    ev, _ = _tunnel_probe(mesh, tc.encode_open(msg).hex(), 5)
    assert isinstance(ev, tc.Reject) and ev.reason == "no_such_service", ev
    msg2 = tc.Open(**{**msg.__dict__, "service": "default/far", "port": 7000,
                      "target": tc.Address(mesh.ips["web1"], 7000)})
    ev, _ = _tunnel_probe(mesh, tc.encode_open(msg2).hex(), 5)
    assert isinstance(ev, tc.Reject) and ev.reason == "no_endpoint", ev


def test_status_reports_pods_and_connections(mesh):
    st = mesh.ctl("n1").status()
    assert st["running"] and st["pods"] == ["client", "web1"] and st["relay"] == relay_modes.default() and st["pump"] in ("cython", "python")
    st2 = mesh.ctl("n2").status()
    assert st2["pods"] == ["web2"]
    with open(f"/proc/{st['pid']}/limits") as f:  # room for many long-lived connections
        soft, hard = next(map(int, line.split()[3:5]) for line in f if line.startswith("Max open files"))
    assert soft == hard and soft > 1024, (soft, hard)  # raised as far as this machine allows


def test_socket_lb_picks_endpoints_in_the_kernel(mesh):
    """No forwarder on the path: the server sees the client's own address,
    the app still sees the VIP, and both endpoints (one on each node) serve."""
    seen = set()
    for _ in range(12):
        r = client(mesh, mesh.vips["socklb"], 7000, size=10000)
        assert r.get("error") is None and r["same"], r
        assert r["peername"] == [mesh.vips["socklb"], 7000]
        assert r["greeting"][1] == mesh.ips["client"]
        seen.add(r["greeting"][0])
    assert seen == {"web1", "web2"}
    before = mesh.ctl("n1").status()["stats"]["accepted"]
    client(mesh, mesh.vips["socklb"], 7000)
    assert mesh.ctl("n1").status()["stats"]["accepted"] == before  # never reached the forwarder
