"""The host layer over netlink (dataplane/host/netlink.py, netns.py) on the real kernel:
namespaces it makes are ordinary `ip netns` ones, errors are one line naming what
failed, the calling thread always comes back to its own namespace, sysctls land in
the namespace they name, and no socket or namespace handle is left open.
Needs root; skipped otherwise unless GLASSWING_REQUIRE_ALL=1."""
import os
import secrets
import subprocess
import time

import pytest

from dataplane.errors import GlasswingError
from dataplane.host import netlink
from dataplane.host import netns
from lab.cluster import Lab
from tests.support import leaks
from tests.support.need import need_root_and_bpf


def _ip(*args) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _my_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def scratch():
    """A namespace made by netns.create, removed (quietly) at the end."""
    need_root_and_bpf()
    name = f"gwtest-nl-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name, check=False)


def test_a_made_namespace_is_an_ip_netns_one(scratch):
    assert scratch in _ip("netns", "list").split()
    assert "lo" in _ip("netns", "exec", scratch, "ip", "-o", "link")
    with pytest.raises(GlasswingError, match=f"^cannot create network namespace {scratch}: File exists$"):
        netns.create(scratch)
    netns.delete(scratch)
    assert scratch not in _ip("netns", "list").split()
    with pytest.raises(GlasswingError, match=f"^cannot delete network namespace {scratch}: "):
        netns.delete(scratch)


def test_errors_are_one_line_and_the_thread_comes_home(scratch):
    home, fds = _my_netns(), _open_fds()
    with netlink.opened(scratch) as nl:
        nl.up("lo")
        nl.add_address("lo", "198.18.77.5/32")
        with pytest.raises(GlasswingError) as e:
            nl.add_address("lo", "198.18.77.5/32")
        assert str(e.value) == f"cannot add address 198.18.77.5/32 to lo in netns {scratch}: File exists"
        with pytest.raises(GlasswingError) as e:
            nl.add_route("198.18.78.0/24", dev="nope0")
        assert str(e.value) == f"cannot add route 198.18.78.0/24 dev nope0 in netns {scratch}: No such device"
        assert _my_netns() == home  # the socket is in scratch; this thread is not
    with pytest.raises(GlasswingError, match="^network namespace 'gwtest-nl-none' does not exist$"):
        with netlink.opened("gwtest-nl-none"):
            pass
    assert "198.18.77.5/32" in _ip("-n", scratch, "addr", "show", "dev", "lo")
    assert "198.18.77.5" not in _ip("addr", "show", "dev", "lo")
    assert _my_netns() == home
    assert _open_fds() == fds


def test_sysctl_is_set_in_the_named_namespace_only(scratch):
    outside = _ip("netns", "exec", scratch, "cat", "/proc/sys/net/ipv4/ip_forward").strip()
    assert outside == "0"
    host_before = open("/proc/sys/net/ipv4/ip_forward").read()
    netns.sysctl("net.ipv4.ip_forward", "1", netns=scratch)
    assert _ip("netns", "exec", scratch, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert open("/proc/sys/net/ipv4/ip_forward").read() == host_before
    with pytest.raises(GlasswingError, match=f"^cannot set sysctl net.ipv4.no_such=1 in netns {scratch}: "):
        netns.sysctl("net.ipv4.no_such", "1", netns=scratch)


def test_pod_attached_by_process_keeps_the_process_and_leaks_nothing(kernel_before):
    """`pod add --netns /proc/PID/ns/net` names the process's namespace; removing
    the pod removes the name only. A pod add and remove leave no fd open."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "300"])
    lab = Lab("gwnetlink")
    try:
        home = _my_netns()
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{proc.pid}/ns/net").st_ino == home:  # until unshare has run
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        lab.node("n1")
        for attempt in range(2):  # the first makes the lab's store handles; the second counts fds
            fds = _open_fds()
            rec = lab.pod("ext", "n1", ns=f"/proc/{proc.pid}/ns/net")
            assert not rec["netns_owned"] and rec["pod_if"] == "gw0"
            assert os.stat(netns.path(rec["netns"])).st_ino == os.stat(f"/proc/{proc.pid}/ns/net").st_ino
            assert proc.pid in netns.pids(rec["netns"])
            assert f"inet {rec['ip']}/32" in _ip("netns", "exec", rec["netns"], "ip", "-o", "addr", "show", "gw0")
            lab.ctl().pod_rm("ext")
            assert proc.poll() is None, "the attached namespace's process was killed"
            assert not netns.exists(rec["netns"])
            assert _my_netns() == home
        assert _open_fds() == fds
    finally:
        proc.kill()
        proc.wait()
        lab.release()
    leaks.assert_clean(kernel_before, leaks.snapshot())
