"""The embedded KV backend: one JSON file on the node (DIR/kv.json), shared by
every process on it (CLI commands, the forwarders of the simulated nodes).

Writers serialize on an exclusive flock of DIR/kv.lock. A commit reads the
current file, sweeps expired leases, checks the compares, applies the txn,
writes a temp file, fsyncs it, renames it over kv.json and fsyncs the
directory: a writer SIGKILLed at any point leaves the old or the new file,
never a torn one, and whatever a commit acknowledged is on disk. Temp files
of killed writers are removed by the next lock holder.

Readers take no lock: kv.json is never modified in place, so any open of it
is one complete document. A process caches the parsed document together with
an open descriptor of the file it came from; holding the descriptor pins the
inode, so "same inode at the path" means "same content" (a freed inode could
otherwise be reused by a later commit and fool a stat-based check).

Layout of kv.json (compact JSON, values base64: JSON cannot hold arbitrary
bytes, and base64 is exact, 4/3 the size and decoded in C):

    {"schema": 1, "revision": R, "compacted": C,
     "keys":   {key: [value_b64, mod_revision, create_revision, lease]},
     "leases": {"id": [ttl, expires_at (time.time())]},
     "events": [[kind, key, value_b64, revision], ...]}   # oldest first

The event log keeps the last EVENT_LOG events. "compacted" is the newest
revision with a dropped event: a watch after a revision older than that has
missed history and gets Compacted (one txn larger than the log compacts its
own revision, as a watcher could not see all of it).

Leases: every write (commit, grant, keepalive, revoke) first deletes the keys
of expired leases, as delete events at a new revision. Readers never return a
key whose lease has expired, even before a writer swept it. Because no server
runs, a watch that sees an expired lease sweeps it itself (takes the lock
once), so watchers learn of expiries without waiting for an unrelated write.

A txn revision is consumed only if the txn changes something (as in etcd): a
txn of only compares, or deletes of missing keys, returns the current revision.
"""
import base64
import bisect
import fcntl
import json
import os
import secrets
import threading
import time
from typing import Optional

from dataplane.errors import GlasswingError
from dataplane.store.kv import Compacted, Conflict, Event, KeyValue, Txn, Unavailable

SCHEMA = 1
EVENT_LOG = 10000
POLL = 0.02  # seconds between stats of kv.json in watch()
FILE = "kv.json"
LOCK = "kv.lock"
TMP_PREFIX = FILE + ".tmp."

_b64 = base64.b64encode
_unb64 = base64.b64decode


def validate_txn(txn: Txn) -> None:
    """Reject malformed txns before they reach a backend (same rules as etcd:
    a key may not be both put and deleted in one txn)."""
    if not isinstance(txn, Txn):
        raise GlasswingError(f"commit wants a Txn, not {type(txn).__name__}")
    for key, rev in txn.compares.items():
        _check_key(key)
        if not isinstance(rev, int) or isinstance(rev, bool) or rev < 0:
            raise GlasswingError(f"compare on {key!r} wants a mod_revision >= 0, not {rev!r}")
    for key, put in txn.puts.items():
        _check_key(key)
        if not (isinstance(put, tuple) and len(put) == 2):
            raise GlasswingError(f"put of {key!r} wants (value, lease), not {put!r:.60}")
        value, lease = put
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise GlasswingError(f"put of {key!r}: value must be bytes, not {type(value).__name__}")
        if not isinstance(lease, int) or isinstance(lease, bool) or lease < 0:
            raise GlasswingError(f"put of {key!r}: lease must be an id >= 0, not {lease!r}")
    for key in txn.deletes:
        _check_key(key)
        if key in txn.puts:
            raise GlasswingError(f"txn both puts and deletes {key!r}")


def _check_key(key) -> None:
    if not isinstance(key, str) or not key:
        raise GlasswingError(f"a key must be a non-empty str, not {key!r}")


class _Snapshot:
    """One parsed kv.json, pinned by an open descriptor of that file."""
    __slots__ = ("doc", "fd", "ident", "_sorted")

    def __init__(self, doc: dict, fd: int = -1, ident=None):
        self.doc = doc
        self.fd = fd
        self.ident = ident
        self._sorted = None

    def sorted_keys(self) -> list:
        if self._sorted is None:
            self._sorted = sorted(self.doc["keys"])
        return self._sorted

    def live_leases(self, now: float) -> set:
        return {int(i) for i, (_ttl, exp) in self.doc["leases"].items() if exp > now}

    def next_expiry(self) -> float:
        return min((exp for _ttl, exp in self.doc["leases"].values()), default=float("inf"))


def _empty() -> dict:
    return {"schema": SCHEMA, "revision": 0, "compacted": 0, "keys": {}, "leases": {}, "events": []}


class FileKV:
    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, FILE)
        self._lock_path = os.path.join(directory, LOCK)
        self._mu = threading.Lock()
        self._snap: Optional[_Snapshot] = None

    def __repr__(self):
        return f"FileKV({self.directory!r})"

    # --- reading -------------------------------------------------------

    def _current(self) -> _Snapshot:
        """The document now at kv.json, parsed at most once per file version."""
        with self._mu:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._drop_snap()
                self._snap = _Snapshot(_empty())
                return self._snap
            except OSError as e:
                raise Unavailable(f"store {self.path} is unreadable: {e}") from None
            snap = self._snap
            if snap is not None and snap.ident == (st.st_dev, st.st_ino):
                return snap
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # the directory went away
                self._drop_snap()
                self._snap = _Snapshot(_empty())
                return self._snap
            except OSError as e:
                raise Unavailable(f"store {self.path} is unreadable: {e}") from None
            try:
                fst = os.fstat(fd)
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
                doc = self._parse(data)
            except BaseException:
                os.close(fd)
                raise
            self._drop_snap()
            self._snap = _Snapshot(doc, fd, (fst.st_dev, fst.st_ino))
            return self._snap

    def _parse(self, data: bytes) -> dict:
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise Unavailable(f"store {self.path} is unreadable: {e}") from None
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            schema = doc.get("schema") if isinstance(doc, dict) else None
            raise GlasswingError(f"store {self.path} has schema {schema}, want {SCHEMA}")
        return doc

    def _drop_snap(self) -> None:
        if self._snap is not None and self._snap.fd >= 0:
            os.close(self._snap.fd)
        self._snap = None

    @staticmethod
    def _kv(key: str, entry: list) -> KeyValue:
        return KeyValue(key, _unb64(entry[0]), entry[1], entry[2], entry[3])

    def get(self, key: str) -> Optional[KeyValue]:
        snap = self._current()
        entry = snap.doc["keys"].get(key)
        if entry is None:
            return None
        if entry[3] and entry[3] not in snap.live_leases(time.time()):
            return None
        return self._kv(key, entry)

    def range(self, prefix: str) -> tuple:
        snap = self._current()
        keys = snap.doc["keys"]
        names = snap.sorted_keys()
        live = snap.live_leases(time.time())
        out = []
        kv = self._kv
        for i in range(bisect.bisect_left(names, prefix), len(names)):
            name = names[i]
            if not name.startswith(prefix):
                break
            entry = keys[name]
            if entry[3] and entry[3] not in live:
                continue
            out.append(kv(name, entry))
        return out, snap.doc["revision"]

    def revision(self) -> int:
        return self._current().doc["revision"]

    def watch(self, prefix: str, after: int, timeout: float) -> list:
        deadline = time.monotonic() + max(timeout, 0.0)
        seen = swept = None
        while True:
            snap = self._current()
            if snap is not seen:
                seen = snap
                doc = snap.doc
                if after < doc["compacted"]:
                    raise Compacted(f"watch of {prefix!r} after revision {after}: the store "
                                    f"{self.path} kept history only after revision {doc['compacted']}")
                events = doc["events"]
                i = len(events)
                while i > 0 and events[i - 1][3] > after:
                    i -= 1
                found = [Event(kind, key, _unb64(value), rev)
                         for kind, key, value, rev in events[i:] if key.startswith(prefix)]
                if found:
                    return found
            if swept is not snap and snap.next_expiry() <= time.time():
                swept = snap  # one try per file version: a read-only reader cannot sweep
                try:
                    self._write_op(lambda doc, now: False)
                except (OSError, GlasswingError):
                    pass
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(POLL, remaining))

    # --- writing -------------------------------------------------------

    def _write_op(self, apply):
        """Under the lock: load, sweep expired leases, apply(doc, now) -> bool
        (changed), write if anything changed. Returns (doc, result of apply).
        apply may raise after marking nothing; the sweep is still written."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            lock = open(self._lock_path, "a")
        except OSError as e:
            raise Unavailable(f"store {self.directory} is unwritable: {e}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._drop_orphans()
            snap = self._current()
            old = snap.doc
            # Shallow copies: entries are replaced, never mutated, so the
            # cached document stays intact if apply raises.
            doc = dict(old, keys=dict(old["keys"]), leases=dict(old["leases"]),
                       events=list(old["events"]))
            now = time.time()
            swept = self._sweep(doc, now)
            try:
                changed = apply(doc, now)
            except BaseException:
                if swept:
                    self._write(doc)
                raise
            if swept or changed:
                self._write(doc)
            return doc

    @staticmethod
    def _sweep(doc: dict, now: float) -> bool:
        dead = {int(i) for i, (_ttl, exp) in doc["leases"].items() if exp <= now}
        if not dead:
            return False
        for lease in dead:
            del doc["leases"][str(lease)]
        FileKV._delete_where(doc, lambda e: e[3] in dead)
        return True

    @staticmethod
    def _delete_where(doc: dict, pred) -> None:
        keys = doc["keys"]
        victims = [k for k, e in keys.items() if e[3] and pred(e)]
        if victims:
            doc["revision"] += 1
            rev = doc["revision"]
            for k in victims:
                del keys[k]
            FileKV._log(doc, [["delete", k, "", rev] for k in victims])

    @staticmethod
    def _log(doc: dict, new: list) -> None:
        events = doc["events"]
        events.extend(new)
        if len(events) > EVENT_LOG:
            cut = len(events) - EVENT_LOG
            doc["compacted"] = max(doc["compacted"], events[cut - 1][3])
            del events[:cut]

    def _drop_orphans(self) -> None:
        """Temp files of writers killed mid-write (we hold the lock: none is live)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.startswith(TMP_PREFIX):
                try:
                    os.unlink(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass

    def _write(self, doc: dict) -> None:
        data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        tmp = os.path.join(self.directory, f"{TMP_PREFIX}{os.getpid()}.{threading.get_ident()}")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise Unavailable(f"store {self.directory} is unwritable: {e}") from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.rename(tmp, self.path)
        except BaseException as e:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise Unavailable(f"store {self.path} could not be written: {e}") from None
            raise
        try:
            dfd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            raise Unavailable(f"store {self.path} could not be synced: {e}") from None
        # The file just written becomes the cached snapshot, pinned by fd.
        with self._mu:
            self._drop_snap()
            self._snap = _Snapshot(doc, fd, (st.st_dev, st.st_ino))

    def commit(self, txn: Txn) -> int:
        validate_txn(txn)

        def apply(doc, now):
            keys = doc["keys"]
            for key, want in txn.compares.items():
                entry = keys.get(key)
                have = entry[1] if entry is not None else 0
                if have != want:
                    state = f"mod_revision {have}" if entry is not None else "no such key"
                    expect = f"mod_revision {want}" if want else "no such key"
                    raise Conflict(f"{key!r} changed: wanted {expect}, found {state}")
            for key, (_value, lease) in txn.puts.items():
                if lease and str(lease) not in doc["leases"]:
                    raise GlasswingError(f"put of {key!r}: lease {lease} not found (expired or revoked)")
            gone = [k for k in txn.deletes if k in keys]
            if not txn.puts and not gone:
                return False
            doc["revision"] += 1
            rev = doc["revision"]
            events = []
            for key, (value, lease) in txn.puts.items():
                enc = _b64(value).decode()
                entry = keys.get(key)
                keys[key] = [enc, rev, entry[2] if entry is not None else rev, lease]
                events.append(["put", key, enc, rev])
            for key in gone:
                del keys[key]
                events.append(["delete", key, "", rev])
            self._log(doc, events)
            return True

        return self._write_op(apply)["revision"]

    def grant(self, ttl: int) -> int:
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            raise GlasswingError(f"a lease ttl must be a whole number of seconds >= 1, not {ttl!r}")
        made = []

        def apply(doc, now):
            lease = secrets.randbits(62) + 1
            while str(lease) in doc["leases"]:
                lease = secrets.randbits(62) + 1
            doc["leases"][str(lease)] = [ttl, now + ttl]
            made.append(lease)
            return True

        self._write_op(apply)
        return made[0]

    def keepalive(self, lease: int) -> int:
        left = [0]

        def apply(doc, now):
            entry = doc["leases"].get(str(lease))
            if entry is None:
                return False
            doc["leases"][str(lease)] = [entry[0], now + entry[0]]
            left[0] = entry[0]
            return True

        self._write_op(apply)
        return left[0]

    def revoke(self, lease: int) -> None:
        def apply(doc, now):
            if doc["leases"].pop(str(lease), None) is None:
                return False
            self._delete_where(doc, lambda e: e[3] == lease)
            return True

        self._write_op(apply)

    def close(self) -> None:
        with self._mu:
            self._drop_snap()

    def __del__(self):  # an unclosed store must not keep old file versions open
        snap = getattr(self, "_snap", None)
        if snap is not None and snap.fd >= 0:
            try:
                os.close(snap.fd)
            except OSError:
                pass
