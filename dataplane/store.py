"""The embedded store: one JSON document on the node, shared by every
`glasswing` command and the forwarders of the simulated nodes on it.

Writes take an exclusive flock, bump a revision, and replace the file
atomically (write, fsync, rename, fsync dir), so a crash mid-write leaves the
old or the new document, never a torn one. Readers need no lock.
"""
import contextlib
import fcntl
import json
import os
import secrets

from .errors import GlasswingError

SCHEMA = 1


def _empty() -> dict:
    return {"schema": SCHEMA, "revision": 0, "cluster": secrets.token_hex(3),
            "next_service_id": 1, "nodes": {}, "pods": {}, "services": {}}


class Store:
    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, "store.json")
        self._lock_path = os.path.join(directory, "store.lock")

    def read(self) -> dict:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as e:
            raise GlasswingError(f"store {self.path} is unreadable: {e}") from None
        if doc.get("schema") != SCHEMA:
            raise GlasswingError(f"store {self.path} has schema {doc.get('schema')}, want {SCHEMA}")
        return doc

    def stamp(self):
        """Cheap change detector for watchers: (mtime_ns, size, inode) or None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    @contextlib.contextmanager
    def transaction(self):
        """Yield the document for changes; committed only if the block succeeds."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._drop_orphans()
            doc = self.read()
            yield doc
            doc["revision"] += 1
            self._write(doc)

    def _drop_orphans(self) -> None:
        """Temp files of writers killed mid-write (we hold the lock: none is live)."""
        prefix = os.path.basename(self.path) + ".tmp."
        for name in os.listdir(self.directory):
            if name.startswith(prefix):
                os.unlink(os.path.join(self.directory, name))

    def _write(self, doc: dict) -> None:
        tmp = f"{self.path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path)
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
