"""Bad input to the `glasswing` CLI: one error line, a non-zero exit, and nothing changed.

Every command runs as a subprocess (`python -m glasswing`, the entry point's own module, so a
worktree tests its own code) with GLASSWING_STATE_DIR and
GLASSWING_RUN_DIR pointing at temporary directories, so the real store is never touched.
A module fixture makes node n1, pod p1 on it and service s1 with the real CLI (for the
"already exists" rows) and removes them at the end, checking that no namespace or cgroup
of its cluster is left. After each bad command the test compares, before and after: the
kv.json bytes, the cluster's namespaces (gw-CLUSTER-*), the cgroup directories under
glasswing/CLUSTER and the interfaces in n1's namespace.

Only this test's cluster is looked at: other clusters (a demo, another test run) may come
and go on the same machine meanwhile. Needs root; skipped otherwise unless
GLASSWING_REQUIRE_ALL=1.
"""
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import pytest

from dataplane.host import topology
from dataplane.store.kv_open import open_kv
from dataplane.store.registry import Registry

GLASSWING = [sys.executable, "-m", "glasswing"]
ERROR = "glasswing: error: "
NOBODY = 65534
TIMEOUT = 120  # generous bound for one command; never a pass/fail timing

if os.geteuid() != 0:
    if os.environ.get("GLASSWING_REQUIRE_ALL") == "1":
        raise RuntimeError("tests/integration/test_bad_input.py needs root (GLASSWING_REQUIRE_ALL=1)")
    pytest.skip("needs root: namespaces and cgroups", allow_module_level=True)


def _ip(*args, check=True) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0 or not check, f"ip {' '.join(args)}: {r.stderr}"
    return r.stdout


def _netns_names() -> set:
    return {line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()}


def _links(ns: str) -> dict:
    """{name: kind} of the links in namespace ns ("" for a link with no kind, like lo)."""
    out = {}
    for link in json.loads(_ip("-j", "-d", "-n", ns, "link", "show") or "[]"):
        out[link["ifname"]] = link.get("linkinfo", {}).get("info_kind", "")
    return out


def _cgroup_dirs(path: str) -> set:
    return {d for d, _subdirs, _files in os.walk(path)}


@dataclass
class Env:
    state: str
    run: str
    environ: dict
    facts: dict = field(default_factory=dict)  # n1's and p1's addresses etc., for the rows

    @property
    def store_path(self):
        return os.path.join(self.state, "kv.json")

    def store(self) -> dict:
        """The registry document (read-only: Registry.read() never writes)."""
        kv = open_kv("file://" + self.state)
        try:
            return Registry(kv).read()
        finally:
            kv.close()

    def gw(self, *argv, user=None) -> subprocess.CompletedProcess:
        def drop():
            os.setgroups([])
            os.setgid(user)
            os.setuid(user)
        return subprocess.run([*GLASSWING, *argv], capture_output=True, text=True, env=self.environ,
                              timeout=TIMEOUT, preexec_fn=drop if user is not None else None)

    def ok(self, *argv) -> str:
        r = self.gw(*argv)
        assert r.returncode == 0, f"glasswing {' '.join(argv)}: exit {r.returncode}: {r.stderr}"
        return r.stdout

    def snapshot(self) -> dict:
        """Everything a bad command must leave as it was."""
        try:
            with open(self.store_path, "rb") as f:
                store = f.read()
        except FileNotFoundError:
            store = None
        snap = {"store": store}
        cluster = self.facts.get("cluster")
        if cluster:
            snap["netns"] = {n for n in _netns_names() if n.startswith(f"gw-{cluster}-")}
            snap["cgroups"] = _cgroup_dirs(topology.cgroup_base(cluster))
            snap["node links"] = _links(self.facts["node_ns"])
        return snap


def _make_env() -> Env:
    # World-readable directories under /tmp, so the rows run as nobody can reach them.
    state = tempfile.mkdtemp(prefix="gwtest-state-")
    run = tempfile.mkdtemp(prefix="gwtest-run-")
    for d in (state, run):
        os.chmod(d, 0o755)
    environ = dict(os.environ, GLASSWING_STATE_DIR=state, GLASSWING_RUN_DIR=run)
    environ.pop("GLASSWING_NODE", None)
    return Env(state, run, environ)


@pytest.fixture(scope="module")
def env():
    e = _make_env()
    cluster = None
    try:
        e.ok("node", "add", "n1")
        cluster = e.store()["cluster"]
        assert cluster, "node add must have made the cluster id"
        e.ok("--node", "n1", "pod", "add", "p1")
        e.ok("service", "add", "s1", "--port", "80", "--endpoint", "p1")
        doc = e.store()
        n1, p1 = doc["nodes"]["n1"], doc["pods"]["p1"]
        e.facts.update(cluster=cluster, node_ns=n1["netns"], gateway=n1["gateway"],
                       pod_cidr=n1["pod_cidr"], p1_ip=p1["ip"], p1_cgroup=p1["cgroup"],
                       p1_host_if=p1["host_if"], vip=doc["services"]["default/s1"]["vip"])
        assert set(doc["nodes"]) == {"n1"}, "the fixture must not make the host's local node"
        yield e
    finally:
        results = [e.gw("service", "rm", "s1"), e.gw("pod", "rm", "p1"), e.gw("node", "rm", "n1")]
        shutil.rmtree(e.state, ignore_errors=True)
        shutil.rmtree(e.run, ignore_errors=True)
        if cluster:
            assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
            assert {n for n in _netns_names() if n.startswith(f"gw-{cluster}-")} == set()
            assert not os.path.exists(topology.cgroup_base(cluster)), "cgroups of the test cluster left"


# (argv, substring of the one error line); "{name}" is filled in from Env.facts.
BAD = [
    # unknown objects
    (["pod", "rm", "nope"], "unknown pod 'nope'"),
    (["pod", "exec", "nope", "--", "true"], "unknown pod 'nope'"),
    (["service", "rm", "nope"], "unknown service 'nope'"),
    (["node", "rm", "nope"], "unknown node 'nope'"),
    (["--node", "nope", "pod", "add", "p2"], "unknown node 'nope'"),
    (["service", "add", "s2", "--port", "80", "--endpoint", "nope"], "unknown pod 'nope' in endpoint 'nope'"),
    (["service", "add", "s2", "--port", "80", "--endpoint", "p1", "--endpoint", "nope:8080"],
     "unknown pod 'nope' in endpoint 'nope:8080'"),
    # duplicates and objects in use
    (["--node", "n1", "pod", "add", "p1"], "pod 'p1' already exists"),
    (["service", "add", "s1", "--port", "80"], "service 's1' already exists"),
    (["node", "add", "n1"], "node 'n1' already exists"),
    (["node", "add", "local"], "node 'local' already exists"),
    (["node", "rm", "n1"], "node 'n1' still has pods: p1"),
    (["--node", "n1", "pod", "add", "p2", "--ip", "{p1_ip}"], "pod address {p1_ip} is already in use"),
    (["--node", "n1", "pod", "add", "p2", "--ip", "{gateway}"], "pod address {gateway} is already in use"),
    (["service", "add", "s2", "--port", "80", "--vip", "{vip}"], "service address {vip} is already in use"),
    (["--node", "n1", "pod", "add", "p2", "--cgroup", "{p1_cgroup}"], "already belongs to pod 'p1'"),
    # addresses
    (["--node", "n1", "pod", "add", "p2", "--ip", "10.0.0.5"], "pod address 10.0.0.5 is outside {pod_cidr}"),
    (["--node", "n1", "pod", "add", "p2", "--ip", "198.19.0.5"], "pod address 198.19.0.5 is outside {pod_cidr}"),
    (["--node", "n1", "pod", "add", "p2", "--ip", "not-an-ip"], "invalid pod address 'not-an-ip'"),
    (["service", "add", "s2", "--port", "80", "--vip", "10.0.0.1"],
     "service address 10.0.0.1 is outside 198.19.0.0/16"),
    (["service", "add", "s2", "--port", "80", "--vip", "198.18.0.10"],
     "service address 198.18.0.10 is outside 198.19.0.0/16"),
    # ports
    (["service", "add", "s2", "--port", "0"], "invalid service port 0: out of range 1-65535"),
    (["service", "add", "s2", "--port", "70000"], "invalid service port 70000: out of range 1-65535"),
    (["service", "add", "s2", "--port", "abc"], "invalid service port 'abc': not a number"),
    (["service", "add", "s2", "--port", "80:70000"], "invalid target port 70000: out of range 1-65535"),
    (["service", "add", "s2", "--port", "80", "--port", "80:81"], "service port 80 given twice"),
    (["service", "add", "s2", "--port", "80", "--endpoint", "p1:0"], "invalid endpoint port 0"),
    # names and labels
    (["node", "add", "Upper"], "invalid node name 'Upper'"),
    (["service", "add", "with_underscore", "--port", "80"], "invalid service name 'with_underscore'"),
    (["--node", "n1", "pod", "add", "a" * 41], f"invalid pod name '{'a' * 41}'"),
    (["--node", "n1", "pod", "add", "p2\n"], "invalid pod name 'p2\\n'"),
    (["--node", "Bad_Node", "pod", "list"], "invalid node name 'Bad_Node'"),
    (["--node", "n1", "pod", "add", "p2", "--label", "bad"], "invalid label 'bad': use key=value"),
    (["--node", "n1", "pod", "add", "p2", "--label", "=x"], "invalid label '=x': use key=value"),
    (["service", "add", "s2", "--port", "80", "--selector", "a b=c"], "invalid label 'a b=c'"),
    (["service", "add", "s2", "--port", "80", "--endpoint", "p1", "--selector", "app=web"],
     "give either --endpoint or --selector, not both"),
    # things to attach that are not there
    (["--node", "n1", "pod", "add", "p2", "--netns", "gwtest-no-such-ns"],
     "network namespace 'gwtest-no-such-ns' does not exist"),
    (["--node", "n1", "pod", "add", "p2", "--netns", "/proc/self/ns/net"], "invalid --netns '/proc/self/ns/net'"),
    (["--node", "n1", "pod", "add", "p2", "--netns", "/proc/999999999/ns/net"],
     "cannot attach network namespace gw-{cluster}-pod-p2: no process 999999999"),
    (["--node", "n1", "pod", "add", "p2", "--cgroup", "gwtest-no-such-cgroup"],
     "gwtest-no-such-cgroup does not exist"),
    (["--node", "n1", "pod", "add", "p2", "--cgroup", "../../etc"], "is not inside the cgroup v2 mount"),
    # commands that need more
    (["pod", "exec", "p1"], "pod exec needs a command after --"),
    (["pod", "exec", "p1", "--", "gwtest-no-such-command"], "command not found: gwtest-no-such-command"),
]

# argparse refuses these before glasswing runs: exit 2, usage, and a message naming the argument.
USAGE = [
    (["service", "add", "s2"], "the following arguments are required: --port"),
    (["service", "add", "s2", "--port"], "argument --port: expected one argument"),
    (["pod", "add"], "the following arguments are required: name"),
    (["--node", "n1", "pod", "add", "p2", "--fail", "sometimes"], "argument --fail: invalid choice: 'sometimes'"),
    (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
    (["pod", "frob"], "invalid choice: 'frob'"),
]

# Run as nobody: refused before anything is read or changed.
NOT_ROOT = [
    ["up"],
    ["--node", "n1", "pod", "add", "p2"],
    ["service", "rm", "s1"],
    ["node", "add", "n2"],
]


def _fill(env, items):
    return [s.format(**env.facts) for s in items]


def _assert_unchanged(env, before):
    after = env.snapshot()
    for key in before:
        assert after[key] == before[key], f"{key} changed"


def _ids(rows):
    return [" ".join(argv)[:60] for argv, _ in rows]


@pytest.mark.parametrize("argv, message", BAD, ids=_ids(BAD))
def test_bad_command_fails_with_one_line_and_changes_nothing(env, argv, message):
    argv, (message,) = _fill(env, argv), _fill(env, [message])
    before = env.snapshot()
    r = env.gw(*argv)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(ERROR), r.stderr
    assert message in lines[0]
    _assert_unchanged(env, before)


@pytest.mark.parametrize("argv, message", USAGE, ids=_ids(USAGE))
def test_usage_error_exits_2_and_names_the_argument(env, argv, message):
    before = env.snapshot()
    r = env.gw(*_fill(env, argv))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("usage: glasswing"), r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("glasswing") and ": error: " in last, r.stderr
    assert message in last
    _assert_unchanged(env, before)


@pytest.mark.parametrize("argv", NOT_ROOT, ids=[" ".join(a) for a in NOT_ROOT])
def test_not_root(env, argv):
    before = env.snapshot()
    r = env.gw(*argv, user=NOBODY)
    assert r.returncode == 1, r.stderr
    assert r.stderr == f"{ERROR}must run as root: namespaces, cgroups and BPF need it\n"
    _assert_unchanged(env, before)


def test_bad_commands_on_an_empty_state_dir_create_no_store():
    e = _make_env()
    try:
        for argv, message in [(["pod", "rm", "nope"], "unknown pod 'nope'"),
                              (["service", "rm", "nope"], "unknown service 'nope'"),
                              (["node", "rm", "nope"], "unknown node 'nope'"),
                              (["--node", "nope", "pod", "add", "p1"], "unknown node 'nope'"),
                              (["service", "add", "s1", "--port", "0"], "invalid service port 0"),
                              (["service", "add", "s1", "--port", "80", "--endpoint", "p1"], "unknown pod 'p1'")]:
            r = e.gw(*argv)
            assert (r.returncode, r.stderr.count("\n")) == (1, 1), r.stderr
            assert r.stderr.startswith(ERROR) and message in r.stderr
            assert not os.path.exists(e.store_path), f"{argv} wrote a store"
        assert e.store()["cluster"] is None  # reading the registry makes nothing either
        assert not os.path.exists(e.store_path), "Registry.read() wrote a store"
    finally:
        shutil.rmtree(e.state, ignore_errors=True)
        shutil.rmtree(e.run, ignore_errors=True)


@pytest.mark.parametrize("node", ["local", "n1"])
def test_status_with_nothing_running(env, node):
    before = env.snapshot()
    r = env.gw("--node", node, "status")
    assert (r.returncode, r.stderr) == (3, "")
    assert r.stdout == f"forwarder for node {node}: not running\n"
    r = env.gw("--node", node, "--json", "status")
    assert r.returncode == 3
    assert json.loads(r.stdout) == {"ok": False, "node": node, "running": False}
    _assert_unchanged(env, before)


@pytest.mark.parametrize("node", ["local", "n1"])
def test_down_with_nothing_running(env, node):
    before = env.snapshot()
    r = env.gw("--node", node, "down")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == "nothing was running\n"
    _assert_unchanged(env, before)


# ------------------------------------------------------------ pod add failing part way


@pytest.fixture
def user_netns():
    """A namespace of the user's (not ours): name -> removed at the end whatever happens."""
    made = []

    def make(name):
        _ip("netns", "delete", name, check=False)
        _ip("netns", "add", name)
        made.append(name)
        return name
    yield make
    for name in made:
        _ip("netns", "delete", name, check=False)


def _assert_pod_add_fails_cleanly(env, argv, message):
    before = env.snapshot()
    r = env.gw(*argv)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(ERROR), r.stderr
    assert message in r.stderr
    after = env.snapshot()
    veths = {n for n, kind in after["node links"].items() if kind == "veth" and n.startswith("gw")}
    assert veths == {env.facts["p1_host_if"]}, "a pod veth was left in the node namespace"
    assert not os.path.exists(os.path.join(topology.cgroup_base(env.facts["cluster"]), "pods", "p2"))
    _assert_unchanged(env, before)


def test_pod_add_into_a_namespace_that_has_gw0(env, user_netns):
    ns = user_netns("gwtest-x")
    _ip("-n", ns, "link", "add", "gw0", "type", "veth", "peer", "name", "gw0p")  # no dummy module needed
    _assert_pod_add_fails_cleanly(env, ["--node", "n1", "pod", "add", "p2", "--netns", ns],
                                  f"namespace {ns} already has an interface gw0")
    assert ns in _netns_names(), "the user's namespace was deleted"
    assert _links(ns) == {"lo": "", "gw0": "veth", "gw0p": "veth"}


def test_pod_add_failing_after_the_veth_is_made(env, user_netns):
    # The pod namespace already routes the node's gateway, so adding the route to GATEWAY dev gw0
    # fails after the veth pair, the pod address and the link state were set.
    ns = user_netns("gwtest-y")
    _ip("-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    _ip("-n", ns, "link", "set", "d0", "up")
    _ip("-n", ns, "link", "set", "d1", "up")
    _ip("-n", ns, "route", "add", env.facts["gateway"], "dev", "d0")
    _assert_pod_add_fails_cleanly(env, ["--node", "n1", "pod", "add", "p2", "--netns", ns],
                                  f"cannot add route {env.facts['gateway']} dev gw0 in netns {ns}: File exists")
    assert ns in _netns_names(), "the user's namespace was deleted"
    assert _links(ns) == {"lo": "", "d0": "veth", "d1": "veth"}
    assert _ip("-n", ns, "-4", "addr", "show", "dev", "d0").count("inet ") == 0
    assert env.facts["gateway"] in _ip("-n", ns, "route", "show")


def test_pod_add_failing_at_the_last_step(env):
    # The node namespace already has a route for the pod address: the very last step fails,
    # after the pod namespace, cgroup, veth and both ends' addresses were made.
    node_ns, cluster = env.facts["node_ns"], env.facts["cluster"]
    addr = str(ipaddress.IPv4Network(env.facts["pod_cidr"]).network_address + 77)
    _ip("-n", node_ns, "link", "add", "tstd0", "type", "veth", "peer", "name", "tstd1")
    try:
        _ip("-n", node_ns, "link", "set", "tstd0", "up")
        _ip("-n", node_ns, "link", "set", "tstd1", "up")
        _ip("-n", node_ns, "route", "add", f"{addr}/32", "dev", "tstd0")
        _assert_pod_add_fails_cleanly(env, ["--node", "n1", "pod", "add", "p2", "--ip", addr],
                                      f"cannot add route {addr}/32 dev gw")
        assert f"gw-{cluster}-pod-p2" not in _netns_names()
        assert f"{addr} dev tstd0" in _ip("-n", node_ns, "route", "show")
    finally:
        _ip("-n", node_ns, "link", "del", "tstd0", check=False)

