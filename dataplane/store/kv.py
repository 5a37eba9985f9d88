"""The store's key-value interface, shared by the embedded backend
(kv_file.py, a file on the node) and etcd (kv_etcd.py, etcd v3).

Keys are str paths ("/glasswing/services/default/orders"), values bytes.
Every write advances one store-wide revision; each key carries the revision
of its last change (mod_revision) and of its creation. Writes are
compare-and-swap: a Txn succeeds only if every compare holds, so two
writers that read the same state cannot both commit (no lost updates).
Leases expire keys of a node that stopped renewing them.
"""
from dataclasses import dataclass, field
from typing import Optional, Protocol

from dataplane.errors import GlasswingError


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    kind: str           # "put" or "delete"
    key: str
    value: bytes        # b"" for delete
    revision: int       # the store revision of this change


@dataclass
class Txn:
    """compares: {key: mod_revision}, where 0 means "the key must not exist".
    puts: {key: (value, lease id or 0)}. deletes: keys. All or nothing."""
    compares: dict = field(default_factory=dict)
    puts: dict = field(default_factory=dict)
    deletes: list = field(default_factory=list)


class Conflict(GlasswingError):
    """A compare failed: someone else changed what this writer read."""


class Unavailable(GlasswingError):
    """The store cannot be reached now (etcd down, file unreadable)."""


class Compacted(GlasswingError):
    """A watch asked for history the store no longer keeps: resync with range()."""


class KV(Protocol):
    def get(self, key: str) -> Optional[KeyValue]: ...

    def range(self, prefix: str) -> tuple:
        """([KeyValue sorted by key], store revision) of every key under prefix."""

    def commit(self, txn: Txn) -> int:
        """Apply txn atomically; returns the new store revision; raises Conflict."""

    def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; returns its id."""

    def keepalive(self, lease: int) -> int:
        """Renew; returns the remaining ttl, 0 if the lease is gone."""

    def revoke(self, lease: int) -> None: ...

    def watch(self, prefix: str, after: int, timeout: float) -> list:
        """Events under prefix with revision > after, waiting up to timeout
        seconds for the first; [] on timeout. Raises Compacted or Unavailable."""

    def revision(self) -> int: ...

    def close(self) -> None: ...
