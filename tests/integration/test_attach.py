"""Pods made from a namespace and a cgroup someone else created (as a
container runtime would), and `glasswing pod exec` as a user runs it."""
import json
import os
import secrets
import subprocess
import sys

import pytest

from dataplane.host import cgroups
from lab.cluster import Lab
from tests.support import leaks
from tests.support.mesh import GLASSWING, PEERS, start_peers



@pytest.fixture
def foreign(kernel_before):
    """A namespace and a cgroup that belong to the test, not to glasswing."""
    tag = secrets.token_hex(3)
    ns, cg = f"runtime-{tag}", os.path.join(cgroups.cgroup2_root(), f"runtime-{tag}")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    os.makedirs(cg)
    lab = Lab("gwattach")
    try:
        yield lab, ns, cg
    finally:
        lab.release()
        # glasswing gave them back as it found them
        assert os.path.exists(f"/run/netns/{ns}") and os.path.isdir(cg)
        links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
        assert "gw0" not in links
        subprocess.run(["ip", "netns", "delete", ns])
        cgroups.remove(cg)
        leaks.assert_clean(kernel_before, leaks.snapshot())


@pytest.mark.parametrize("ipv6", [True, False], ids=["ipv6", "no-ipv6"])
def test_attached_namespace_and_cgroup_join_the_mesh(foreign, ipv6):
    """Also a namespace whose runtime turned IPv6 off: the forwarder makes no [::1] sockets
    there (it cannot), and IPv4 works as anywhere else."""
    lab, ns, cg = foreign
    if not ipv6:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.lo.disable_ipv6=1"], check=True)
    lab.node("n1")
    pod = lab.pod("ext", "n1", ns=ns, cgroup=cg)
    assert pod["netns"] == ns and pod["cgroup"] == cg and not pod["netns_owned"]
    lab.pod("web", "n1")
    svc = lab.service("echo", ports=["7000"], endpoints=["web"])
    lab.up("n1")
    start_peers(lab, ("web",), "ext")
    # the real command, as a user types it
    r = subprocess.run([GLASSWING, "pod", "exec", "ext", "--", sys.executable, PEERS, "client",
                        svc["vip"], "7000", "1000"], env=lab.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["peername"] == [svc["vip"], 7000] and out["greeting"] == ["web", "127.0.0.6"] and out["same"]
    with open(os.path.join(cg, "cgroup.procs")) as f:
        assert f.read().strip() == ""  # pod exec's process ran in the cgroup and is gone
    st = lab.ctl("n1").status()
    assert "ext" in st["pods"] and st["errors"] == {}
    lab.ctl().pod_rm("ext")
    assert "ext" not in lab.doc["pods"]


def test_pod_exec_reports_missing_command(foreign):
    lab, _ns, _cg = foreign
    lab.node("n1")
    lab.pod("p", "n1")
    r = subprocess.run([GLASSWING, "pod", "exec", "p", "--", "no-such-command-xyz"], env=lab.env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.strip() == "glasswing: error: command not found: no-such-command-xyz"
