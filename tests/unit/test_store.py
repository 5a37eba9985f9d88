"""dataplane.store.Store: one JSON document, flock-serialised writers, atomic replace."""
import json
import multiprocessing
import os
import random
import signal
import time

import pytest

from dataplane.errors import GlasswingError
from dataplane.store import SCHEMA, Store

TIMEOUT = 60.0  # generous bound for children that should finish; never a pass/fail timing


def test_read_without_a_file_gives_an_empty_document(tmp_path):
    store = Store(str(tmp_path / "state"))
    doc = store.read()
    assert {k: v for k, v in doc.items() if k != "cluster"} == {
        "schema": SCHEMA, "revision": 0, "next_service_id": 1, "nodes": {}, "pods": {}, "services": {}}
    assert len(doc["cluster"]) == 6 and int(doc["cluster"], 16) >= 0
    assert not (tmp_path / "state").exists()  # reading creates nothing
    assert store.stamp() is None


def test_transaction_commits_and_bumps_revision(tmp_path):
    store = Store(str(tmp_path / "state"))
    with store.transaction() as doc:
        doc["nodes"]["n1"] = {"index": 1}
        cluster = doc["cluster"]
    first = store.read()
    assert first["revision"] == 1
    assert first["nodes"] == {"n1": {"index": 1}}
    assert first["cluster"] == cluster  # the cluster id is fixed by the first commit
    with store.transaction() as doc:
        del doc["nodes"]["n1"]
    second = store.read()
    assert (second["revision"], second["nodes"], second["cluster"]) == (2, {}, cluster)
    assert oct(os.stat(tmp_path / "state").st_mode & 0o777) == oct(0o700)


def test_exception_in_transaction_commits_nothing(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as doc:
            doc["nodes"]["n1"] = {}
            raise RuntimeError("boom")
    assert not os.path.exists(store.path)

    with store.transaction() as doc:
        doc["pods"]["p1"] = {"ip": "198.18.1.2"}
    before = open(store.path, "rb").read()
    with pytest.raises(GlasswingError, match="nope"):
        with store.transaction() as doc:
            doc["pods"].clear()
            doc["services"]["s1"] = {}
            raise GlasswingError("nope")
    assert open(store.path, "rb").read() == before
    assert store.read()["revision"] == 1


def test_file_is_replaced_not_rewritten(tmp_path):
    store = Store(str(tmp_path))
    with store.transaction() as doc:
        doc["nodes"]["a"] = {}
    ino = os.stat(store.path).st_ino
    stamp = store.stamp()
    with store.transaction() as doc:
        doc["nodes"]["b"] = {}
    assert os.stat(store.path).st_ino != ino  # a new file renamed over the old one
    assert store.stamp() != stamp
    assert sorted(os.listdir(tmp_path)) == ["store.json", "store.lock"]  # no .tmp left behind
    assert json.loads(open(store.path).read())["nodes"] == {"a": {}, "b": {}}


def test_corrupt_json_names_the_file(tmp_path):
    store = Store(str(tmp_path))
    with open(store.path, "w") as f:
        f.write('{"schema": 1, "revision": ')
    with pytest.raises(GlasswingError) as e:
        store.read()
    assert str(e.value).startswith(f"store {store.path} is unreadable: ")
    assert "\n" not in str(e.value)
    with pytest.raises(GlasswingError, match="is unreadable"):
        with store.transaction():
            pass
    assert open(store.path).read() == '{"schema": 1, "revision": '  # not overwritten


def test_wrong_schema_names_the_file(tmp_path):
    store = Store(str(tmp_path))
    with open(store.path, "w") as f:
        json.dump({"schema": 99}, f)
    with pytest.raises(GlasswingError) as e:
        store.read()
    assert str(e.value) == f"store {store.path} has schema 99, want {SCHEMA}"


def _increment(directory, times):
    store = Store(directory)
    for _ in range(times):
        with store.transaction() as doc:
            doc["counter"] = doc.get("counter", 0) + 1


def test_concurrent_writers_lose_no_update(tmp_path):
    procs = [multiprocessing.Process(target=_increment, args=(str(tmp_path), 25)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    doc = Store(str(tmp_path)).read()
    assert (doc["counter"], doc["revision"]) == (100, 100)


def _write_forever(directory):
    store = Store(directory)
    while True:
        with store.transaction() as doc:
            doc["counter"] += 1
            doc["filler"] = [doc["counter"]] * 20000  # big enough that a kill often lands mid-write


def test_sigkilled_writer_never_leaves_an_unreadable_file(tmp_path):
    store = Store(str(tmp_path))
    with store.transaction() as doc:
        doc["counter"] = 0
    rng = random.Random(1234)
    last = 0
    for _ in range(20):
        p = multiprocessing.Process(target=_write_forever, args=(str(tmp_path),))
        p.start()
        time.sleep(rng.uniform(0.005, 0.15))
        os.kill(p.pid, signal.SIGKILL)
        p.join(TIMEOUT)
        assert p.exitcode == -signal.SIGKILL
        doc = store.read()  # raises GlasswingError on a torn file
        assert doc["counter"] >= last
        assert doc["revision"] == doc["counter"] + 1
        last = doc["counter"]
    assert last > 0, "the writer never committed: the test proved nothing"
    assert any(n.startswith("store.json.tmp.") for n in os.listdir(tmp_path)), \
        "no kill landed mid-write: the test proved nothing"
    # The killed writers' flocks died with them: a new transaction does not hang.
    _increment(str(tmp_path), 1)
    assert store.read()["counter"] == last + 1
