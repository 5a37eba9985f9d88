"""Helpers for the integration topologies (lab.cluster.Lab): the peers.py traffic programs
run inside pods, probes that wait for a listener, and the glasswing CLI."""
import json
import os
import signal
import subprocess
import sys

from tests.support.wait import wait_until

PEERS = os.path.join(os.path.dirname(__file__), "peers.py")
GLASSWING = os.path.join(os.path.dirname(sys.executable), "glasswing")


def wait_listening(lab, pod, ip, port, timeout=10.0):
    probe = f"import socket; socket.create_connection(('{ip}', {port}), 1).close()"
    wait_until(lambda: lab.run(pod, [sys.executable, "-c", probe]).returncode == 0, timeout,
               f"{ip}:{port} to listen (probed from {pod})", 0.1)


def client_and_two_webs(lab, web_labels=None):
    """The topology most integration modules start from: nodes n1 and n2, pods client and web1
    on n1 and web2 on n2 (the web pods labelled web_labels)."""
    lab.node("n1")
    lab.node("n2")
    lab.pod("client", "n1")
    for name, node in (("web1", "n1"), ("web2", "n2")):
        lab.pod(name, node, **({"labels": dict(web_labels)} if web_labels else {}))


def start_peers(lab, pods, probe_from, iperf=False):
    """In each pod: peers.py serve (HTTP 8080, TCP 7000) and, with iperf,
    iperf3 -s on 5201; returns once all of them accept connections."""
    doc = lab.doc
    for name in pods:
        ip = doc["pods"][name]["ip"]
        lab.spawn(name, [sys.executable, PEERS, "serve", name])
        ports = [8080, 7000]
        if iperf:
            lab.spawn(name, ["iperf3", "-s", "-B", ip, "-p", "5201"])
            ports.append(5201)
        for port in ports:
            wait_listening(lab, probe_from, ip, port)


def client(lab, ip, port, size=0, pod="client"):
    r = lab.run(pod, [sys.executable, PEERS, "client", ip, str(port), str(size)], timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def glasswing(lab, *args, stdin=None):
    """Run the glasswing CLI against lab's cluster; its stdout (AssertionError on failure)."""
    r = subprocess.run([GLASSWING, *args], input=stdin, env=lab.env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def wait_synced(lab, timeout=10.0):
    """Every forwarder lab started has reconciled the store as it is now (its status shows
    the store's revision or a later one)."""
    rev = lab.doc["revision"]
    wait_until(lambda: all(lab.ctl(n).status().get("revision", -1) >= rev for n in lab.nodes_up),
               timeout, f"the forwarders at store revision {rev}", 0.05)


def kill_forwarder(lab, node):
    """SIGKILL node's forwarder (a crash) and wait until it is gone."""
    pid = lab.ctl(node).forwarder_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _dead(pid), 5, f"forwarder {pid} to die", 0.05)


def _dead(pid) -> bool:
    """Gone, or a zombie (the forwarder may be our own child, reaped later)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
