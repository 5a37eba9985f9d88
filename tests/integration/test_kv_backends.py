"""One suite for both store backends (kv_file.FileKV and kv_etcd.EtcdKV),
against a real file in a temp dir and a real etcd (lab/etcd_server.py), plus
what only one of them can show: SIGKILLed file writers, etcd going away.

Every test runs on a fresh store; temp dirs and etcd processes are removed
even when a test fails (checked at the end of the module).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

from dataplane.errors import GlasswingError
from dataplane.store.kv import Compacted, Conflict, Txn, Unavailable
from dataplane.store.kv_etcd import EtcdKV, prefix_range
from dataplane.store.kv_file import EVENT_LOG, FileKV, TMP_PREFIX as FILE_TMP_PREFIX
from dataplane.store.kv_open import open_kv
from lab.etcd_server import TMP_PREFIX, EtcdServer, etcd_binary
from tests.support.wait import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LEASE_TTL = 2
EXPIRY_GRACE = 6.0  # etcd checks leases every 500 ms and revokes through raft


def _etcd_pids() -> set:
    out = subprocess.run(["pgrep", "-x", "etcd"], capture_output=True, text=True).stdout
    return set(out.split())


def _our_temp_dirs() -> set:
    tmp = tempfile.gettempdir()
    return {n for n in os.listdir(tmp) if n.startswith(TMP_PREFIX)}


@pytest.fixture(scope="module", autouse=True)
def leaves_nothing_behind():
    pids, dirs = _etcd_pids(), _our_temp_dirs()
    yield
    assert _etcd_pids() - pids == set(), "etcd processes left behind"
    assert _our_temp_dirs() - dirs == set(), "temp dirs left behind"


def need_etcd():
    if etcd_binary() is None:
        pytest.skip("needs etcd (Debian package etcd-server)")


@pytest.fixture
def file_dir():
    d = tempfile.mkdtemp(prefix=TMP_PREFIX + "file-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def etcd_server():
    need_etcd()
    with EtcdServer() as server:
        yield server


@pytest.fixture(params=["file", "etcd"])
def kv(request):
    if request.param == "file":
        store = FileKV(request.getfixturevalue("file_dir"))
    else:
        store = EtcdKV(request.getfixturevalue("etcd_server").endpoint)
    try:
        yield store
    finally:
        store.close()


def url_of(kv) -> str:
    if isinstance(kv, FileKV):
        return "file://" + kv.directory
    return "etcd://" + kv.endpoint.split("://", 1)[1]


def forget_history(kv) -> int:
    """Make the store drop its history up to now; returns a revision R such
    that watch(after=R) works and watching from before R cannot."""
    if isinstance(kv, FileKV):
        # One txn bigger than the event log pushes out everything before it.
        return kv.commit(Txn(puts={f"/filler/{i:05d}": (b"x", 0) for i in range(EVENT_LOG + 1)}))
    rev = kv.commit(Txn(puts={"/filler/0": (b"x", 0)}))
    req = urllib.request.Request(kv.endpoint + "/v3/kv/compaction",
                                 json.dumps({"revision": str(rev), "physical": True}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
    return rev


def put(kv, key, value=b"v", lease=0):
    return kv.commit(Txn(puts={key: (value, lease)}))


# --- basics ----------------------------------------------------------------

def test_empty_store(kv):
    assert kv.get("/t/a") is None
    items, rev = kv.range("/t/")
    assert items == [] and rev == kv.revision() >= 0
    assert kv.range("")[0] == []


def test_get_range_commit(kv):
    values = {"/t/b": b"\x00\xffbinary", "/t/a": b"", "/t/ab": "héllo".encode(), "/u/x": b"other"}
    rev = kv.commit(Txn(puts={k: (v, 0) for k, v in values.items()}))
    for k, v in values.items():
        got = kv.get(k)
        assert (got.key, got.value, got.mod_revision, got.create_revision, got.lease) == (k, v, rev, rev, 0)
    items, at = kv.range("/t/")
    assert at == rev
    assert [(i.key, i.value) for i in items] == [("/t/a", b""), ("/t/ab", "héllo".encode()),
                                                 ("/t/b", b"\x00\xffbinary")]
    assert [i.key for i in kv.range("/t/a")[0]] == ["/t/a", "/t/ab"]
    assert [i.key for i in kv.range("")[0]] == ["/t/a", "/t/ab", "/t/b", "/u/x"]
    assert kv.range("/v")[0] == []
    assert kv.get("/t") is None


def test_revisions_increase_by_one_per_commit(kv):
    start = kv.revision()
    for i in range(1, 6):
        assert kv.commit(Txn(puts={f"/r/{i % 2}": (b"%d" % i, 0)})) == start + i
        assert kv.revision() == start + i
    # a txn of several ops is one revision
    assert kv.commit(Txn(puts={"/r/x": (b"1", 0), "/r/y": (b"2", 0)}, deletes=["/r/0"])) == start + 6
    assert kv.range("/r/")[1] == start + 6


def test_mod_and_create_revisions(kv):
    r1 = put(kv, "/m/k", b"1")
    r2 = put(kv, "/m/other")
    r3 = put(kv, "/m/k", b"2")
    got = kv.get("/m/k")
    assert (got.value, got.create_revision, got.mod_revision) == (b"2", r1, r3)
    assert kv.get("/m/other").mod_revision == r2
    r4 = kv.commit(Txn(deletes=["/m/k"]))
    r5 = put(kv, "/m/k", b"3")
    assert r5 == r4 + 1
    got = kv.get("/m/k")
    assert (got.create_revision, got.mod_revision) == (r5, r5)


def test_compare_on_mod_revision(kv):
    r1 = put(kv, "/c/k", b"1")
    r2 = kv.commit(Txn(compares={"/c/k": r1}, puts={"/c/k": (b"2", 0)}))
    with pytest.raises(Conflict) as e:
        kv.commit(Txn(compares={"/c/k": r1}, puts={"/c/k": (b"stale", 0)}))
    assert "\n" not in str(e.value) and "/c/k" in str(e.value)
    assert kv.get("/c/k").value == b"2"
    assert kv.commit(Txn(compares={"/c/k": r2}, puts={"/c/k": (b"3", 0)})) == r2 + 1


def test_must_not_exist_compare(kv):
    r = kv.commit(Txn(compares={"/n/k": 0}, puts={"/n/k": (b"first", 0)}))
    with pytest.raises(Conflict):
        kv.commit(Txn(compares={"/n/k": 0}, puts={"/n/k": (b"second", 0)}))
    assert kv.get("/n/k").value == b"first"
    # a compare of a live key against 0 fails, of a deleted one succeeds again
    kv.commit(Txn(compares={"/n/k": r}, deletes=["/n/k"]))
    kv.commit(Txn(compares={"/n/k": 0}, puts={"/n/k": (b"third", 0)}))
    assert kv.get("/n/k").value == b"third"


def test_conflict_leaves_nothing_written(kv):
    r1 = kv.commit(Txn(puts={"/x/a": (b"a", 0), "/x/b": (b"b", 0)}))
    put(kv, "/x/a", b"a2")
    before = kv.range("/x/")
    with pytest.raises(Conflict):
        kv.commit(Txn(compares={"/x/b": r1, "/x/a": r1},
                      puts={"/x/b": (b"new", 0), "/x/c": (b"new", 0)}, deletes=["/x/a"]))
    assert kv.range("/x/") == before
    assert kv.revision() == before[1]


def test_txn_is_atomic(kv):
    kv.commit(Txn(puts={"/a/1": (b"1", 0), "/a/2": (b"2", 0), "/a/3": (b"3", 0)}))
    base = kv.revision()
    rev = kv.commit(Txn(puts={"/a/4": (b"4", 0), "/a/1": (b"one", 0)}, deletes=["/a/2", "/a/3"]))
    assert rev == base + 1
    items, _ = kv.range("/a/")
    assert [(i.key, i.value, i.mod_revision) for i in items] == [("/a/1", b"one", rev), ("/a/4", b"4", rev)]
    events = kv.watch("/a/", base, 1.0)
    assert {(e.kind, e.key, e.revision) for e in events} == {
        ("put", "/a/4", rev), ("put", "/a/1", rev), ("delete", "/a/2", rev), ("delete", "/a/3", rev)}


def test_bad_txns_are_refused_not_conflicts(kv):
    with pytest.raises(GlasswingError) as e:
        kv.commit(Txn(puts={"/b/k": (b"v", 0)}, deletes=["/b/k"]))
    assert type(e.value) is GlasswingError and "/b/k" in str(e.value)
    with pytest.raises(GlasswingError) as e:
        kv.commit(Txn(puts={"/b/k": (b"v", 123456789)}))
    assert type(e.value) is GlasswingError and "lease" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(GlasswingError):
        kv.commit(Txn(puts={"/b/k": ("not bytes", 0)}))
    assert kv.get("/b/k") is None


WRITER = """
import sys, time
from dataplane.store.kv import Conflict, Txn
from dataplane.store.kv_open import open_kv
kv = open_kv(sys.argv[1])
key, start = sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.005)  # every writer starts at the same moment
done = conflicts = 0
while done < 25:
    cur = kv.get(key)
    n, rev = (int(cur.value), cur.mod_revision) if cur else (0, 0)
    try:
        kv.commit(Txn(compares={key: rev}, puts={key: (str(n + 1).encode(), 0)}))
        done += 1
    except Conflict:
        conflicts += 1
print(conflicts)
"""


def test_concurrent_writers_lose_no_update(kv):
    start = time.time() + 1.5  # all four start together, after their imports
    env = dict(os.environ, PYTHONPATH=ROOT)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url_of(kv), "/counter", str(start)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, results):
        assert p.returncode == 0, err
    got = kv.get("/counter")
    assert got.value == b"100"
    assert got.mod_revision - got.create_revision == 99  # 100 commits, none lost


# --- leases ----------------------------------------------------------------

def test_lease_expires_without_keepalive(kv):
    lease = kv.grant(LEASE_TTL)
    put(kv, "/l/k", b"v", lease=lease)
    assert kv.get("/l/k").lease == lease
    put(kv, "/l/plain")
    granted = time.monotonic()
    wait_until(lambda: kv.get("/l/k") is None, LEASE_TTL + EXPIRY_GRACE, "the key to leave with its lease", 0.1)
    assert time.monotonic() - granted > LEASE_TTL - 0.5
    assert [i.key for i in kv.range("/l/")[0]] == ["/l/plain"]
    assert kv.keepalive(lease) == 0


def test_lease_kept_alive_stays_then_revoke(kv):
    lease = kv.grant(LEASE_TTL)
    kv.commit(Txn(puts={"/l/a": (b"a", lease), "/l/b": (b"b", lease)}))
    until = time.monotonic() + 2.5 * LEASE_TTL
    while time.monotonic() < until:
        assert kv.keepalive(lease) > 0
        assert [i.key for i in kv.range("/l/")[0]] == ["/l/a", "/l/b"]
        time.sleep(0.5)  # the input: a keepalive every 0.5 s, for 2.5 TTLs
    kv.revoke(lease)
    assert kv.get("/l/a") is None and kv.range("/l/")[0] == []
    assert kv.keepalive(lease) == 0
    kv.revoke(lease)  # revoking a gone lease is not an error


def test_lease_puts_after_expiry_are_refused(kv):
    lease = kv.grant(LEASE_TTL)
    wait_until(lambda: _lease_gone(kv, lease), LEASE_TTL + EXPIRY_GRACE, "the lease to be gone", 0.25)
    with pytest.raises(GlasswingError) as e:
        put(kv, "/l/late", lease=lease)
    assert "lease" in str(e.value)


def _lease_gone(kv, lease):
    # Probing with keepalive would renew it; a put with the lease shows whether it exists.
    try:
        kv.commit(Txn(compares={"/l/probe": 0}, puts={"/l/probe": (b"", lease)}))
    except GlasswingError:
        return True
    kv.commit(Txn(deletes=["/l/probe"]))
    return False


# --- watch -----------------------------------------------------------------

def test_watch_puts_and_deletes(kv):
    put(kv, "/w/before")
    after = kv.revision()
    r1 = put(kv, "/w/a", b"1")
    put(kv, "/other/x")
    r2 = kv.commit(Txn(deletes=["/w/before"]))
    events = kv.watch("/w/", after, 2.0)
    assert [(e.kind, e.key, e.value, e.revision) for e in events] == [
        ("put", "/w/a", b"1", r1), ("delete", "/w/before", b"", r2)]
    assert [e.key for e in kv.watch("/w/", r1, 2.0)] == ["/w/before"]


def test_watch_times_out_empty(kv):
    put(kv, "/w/a")
    after = kv.revision()
    put(kv, "/elsewhere")  # not under the prefix
    t = time.monotonic()
    assert kv.watch("/w/", after, 0.5) == []
    assert 0.45 <= time.monotonic() - t < 3.0


def test_watch_wakes_on_a_commit(kv):
    after = kv.revision()
    writer = threading.Timer(0.3, lambda: put(kv, "/w/late", b"x"))
    writer.start()
    try:
        t = time.monotonic()
        events = kv.watch("/w/", after, 10.0)
        assert time.monotonic() - t < 3.0
    finally:
        writer.join()
    assert [(e.kind, e.key) for e in events] == [("put", "/w/late")]


def test_watch_sees_lease_expiry(kv):
    lease = kv.grant(LEASE_TTL)
    after = put(kv, "/w/leased", b"x", lease=lease)
    events = []
    deadline = time.monotonic() + LEASE_TTL + EXPIRY_GRACE
    while not events and time.monotonic() < deadline:
        events = kv.watch("/w/", after, deadline - time.monotonic())
    assert [(e.kind, e.key) for e in events] == [("delete", "/w/leased")]
    assert events[0].revision > after
    assert kv.get("/w/leased") is None


def test_watch_of_forgotten_history_raises_compacted(kv):
    put(kv, "/w/a")
    old = kv.revision()
    kept = forget_history(kv)
    with pytest.raises(Compacted) as e:
        kv.watch("/w/", old - 1, 1.0)
    assert "\n" not in str(e.value)
    r = put(kv, "/w/b")
    assert [(e.key, e.revision) for e in kv.watch("/w/", kept, 2.0)] == [("/w/b", r)]


# --- size ------------------------------------------------------------------

def test_60000_key_txn_then_range(kv):
    n = 60000
    puts = {f"/big/{i:06d}": (b"endpoint-%06d" % i, 0) for i in range(n)}
    rev = kv.commit(Txn(puts=puts))
    put(kv, "/bigger")  # not under the prefix
    items, at = kv.range("/big/")
    assert len(items) == n and at == rev + 1
    assert items[0].key == "/big/000000" and items[-1].value == b"endpoint-059999"
    assert all(i.mod_revision == rev for i in items)
    assert kv.get("/big/012345").value == b"endpoint-012345"


# --- file only ---------------------------------------------------------------

CRASHER = """
import sys
from dataplane.store.kv import Txn
from dataplane.store.kv_file import FileKV
kv = FileKV(sys.argv[1])
i = int(sys.argv[2])
while True:
    kv.commit(Txn(puts={"/crash/%09d" % i: (b"%d" % i, 0), "/crash-last": (b"%d" % i, 0)}))
    print(i, flush=True)
    i += 1
"""


def test_file_writer_killed_mid_write_loses_nothing(file_dir):
    kv = FileKV(file_dir)
    # a store big enough that a commit spends real time writing
    kv.commit(Txn(puts={f"/pad/{i:05d}": (os.urandom(64), 0) for i in range(4000)}))
    acked, orphans_seen = set(), 0
    env = dict(os.environ, PYTHONPATH=ROOT)
    rng = random.Random(7)
    for round_ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, file_dir, str(round_ * 1_000_000)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = proc.stdout.readline()  # it is committing
            assert first, proc.stderr.read().decode()
            time.sleep(rng.uniform(0.0, 0.2))  # the input: killed at a random point of its commits
        finally:
            proc.send_signal(signal.SIGKILL)
            out, _err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        acked.update(int(x) for x in (first + out).split())
        orphans_seen += any(n.startswith(FILE_TMP_PREFIX) for n in os.listdir(file_dir))
        # a fresh reader (no cache) must find a whole store with every acknowledged commit
        with open(os.path.join(file_dir, "kv.json"), "rb") as f:
            json.loads(f.read())
        fresh = FileKV(file_dir)
        try:
            have = {int(i.value) for i in fresh.range("/crash/")[0]}
            assert acked <= have, f"round {round_}: lost {sorted(acked - have)[:5]}"
            assert len(fresh.range("/pad/")[0]) == 4000
        finally:
            fresh.close()
    # the next writer clears temp files of killed ones
    put(kv, "/after", b"ok")
    assert not [n for n in os.listdir(file_dir) if n.startswith(FILE_TMP_PREFIX)]
    assert len(acked) >= 20
    print(f"{len(acked)} acknowledged commits, temp files orphaned in {orphans_seen}/20 kills")
    kv.close()


def test_file_reader_ignores_expired_lease_before_any_writer(file_dir):
    kv = FileKV(file_dir)
    lease = kv.grant(1)
    put(kv, "/l/k", lease=lease)
    rev = kv.revision()
    time.sleep(1.2)  # the input: the 1 s lease expires
    with open(os.path.join(file_dir, "kv.json")) as f:
        assert "/l/k" in json.load(f)["keys"]  # nobody swept it yet...
    assert kv.get("/l/k") is None and kv.range("/l/")[0] == []  # ...but readers hide it
    assert kv.revision() == rev
    put(kv, "/l/other")  # the next write sweeps it, as a delete at its own revision
    events = kv.watch("/l/", rev, 1.0)
    assert [(e.kind, e.key, e.revision) for e in events] == [("delete", "/l/k", rev + 1),
                                                             ("put", "/l/other", rev + 2)]
    kv.close()


def test_file_unreadable_store_is_unavailable(file_dir):
    with open(os.path.join(file_dir, "kv.json"), "w") as f:
        f.write('{"schema": 1, "revis')
    with pytest.raises(Unavailable) as e:
        FileKV(file_dir).get("/a")
    assert "kv.json" in str(e.value)


# --- etcd only -------------------------------------------------------------

def test_etcd_down_then_back(etcd_server):
    kv = EtcdKV(etcd_server.endpoint)
    lease = kv.grant(60)
    rev = kv.commit(Txn(puts={"/d/a": (b"kept", 0), "/d/b": (b"leased", lease)}))
    etcd_server.stop()
    ops = {"get": lambda: kv.get("/d/a"), "range": lambda: kv.range("/d/"),
           "commit": lambda: put(kv, "/d/c"), "revision": kv.revision,
           "watch": lambda: kv.watch("/d/", rev, 10.0), "grant": lambda: kv.grant(5),
           "keepalive": lambda: kv.keepalive(lease), "revoke": lambda: kv.revoke(lease)}
    for name, op in ops.items():
        t = time.monotonic()
        with pytest.raises(Unavailable) as e:
            op()
        assert time.monotonic() - t < 5.0, name
        msg = str(e.value)
        assert msg.startswith(f"etcd at {etcd_server.endpoint} is unreachable: ") and "\n" not in msg, msg
    etcd_server.start()
    assert kv.get("/d/a").value == b"kept"
    assert kv.get("/d/b").lease == lease
    assert kv.keepalive(lease) > 0
    assert kv.revision() == rev
    assert put(kv, "/d/c", b"new") == rev + 1
    assert [e.key for e in kv.watch("/d/", rev, 2.0)] == ["/d/c"]


def test_etcd_prefix_range():
    assert prefix_range("/a/") == (b"/a/", b"/a0")
    assert prefix_range("") == (b"\0", b"\0")
    assert prefix_range("a\xff") == ("a\xff".encode(), b"a\xc3\xc0")


def test_etcd_txn_over_request_limit_is_refused_clearly(etcd_server):
    kv = EtcdKV(etcd_server.endpoint)
    too_big = Txn(puts={"/huge": (b"x" * (40 << 20), 0)})
    with pytest.raises(GlasswingError) as e:
        kv.commit(too_big)
    assert "too big" in str(e.value) and "--max-request-bytes" in str(e.value)
    assert kv.get("/huge") is None


# --- open_kv -----------------------------------------------------------------

def test_open_kv(file_dir):
    assert isinstance(open_kv(file_dir), FileKV) and open_kv(file_dir).directory == file_dir
    f = open_kv("file://" + file_dir)
    assert isinstance(f, FileKV) and f.directory == file_dir
    e = open_kv("etcd://127.0.0.1:2379")
    assert isinstance(e, EtcdKV) and e.endpoint == "http://127.0.0.1:2379"
    for bad in ("http://127.0.0.1:2379", "etcd://127.0.0.1", "etcd://host:notaport",
                "file://otherhost/x", "", "redis://x:1"):
        with pytest.raises(GlasswingError) as err:
            open_kv(bad)
        assert repr(bad) in str(err.value)
