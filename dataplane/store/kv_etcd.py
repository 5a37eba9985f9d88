"""The etcd v3 KV backend, spoken through etcd's JSON gRPC gateway over plain
HTTP with the standard library only (etcd 3.4 serves it under /v3/).

Gateway JSON: keys and values are base64, int64s are strings, and fields at
their default are left out (no "value" for an empty value, no "kvs" for an
empty range, no "succeeded" for a failed txn, no "type" for a PUT event, no
"TTL" in a keepalive of an unknown lease). Errors come back as a non-200
status with {"error", "code" (gRPC code), "message"}.

"Must not exist" is a compare of mod_revision EQUAL 0 with target MOD: etcd
compares a missing key as an all-zero KeyValue (only VALUE compares on a
missing key always fail).

Big txns: a txn is all or nothing, so commit() never splits one. etcd refuses
a txn of more than --max-txn-ops operations (default 128) or a request over
--max-request-bytes (default 1.5 MiB); commit() then raises a GlasswingError
naming the size and those flags. Run etcd with larger limits for bulk loads
(the tests use --max-txn-ops 100000 --max-request-bytes 33554432).

range() reads in pages of RANGE_PAGE keys pinned to the first page's
revision, so a big range is one consistent snapshot without one huge
response; if etcd compacts that revision between pages, it starts over.

One HTTP connection per request: loopback connects are cheap, and a retried
POST on a stale keep-alive connection could apply a txn twice.
"""
import base64
import http.client
import json
import os
import socket
import time
import urllib.parse
from typing import Optional

from dataplane.errors import GlasswingError
from dataplane.store.kv import Compacted, Conflict, Event, KeyValue, Txn, Unavailable
from dataplane.store.kv_file import validate_txn

CONNECT_TIMEOUT = 2.0  # seconds to open a connection to etcd
REQUEST_TIMEOUT = 30.0  # seconds to wait for an answer (a 60,000-op txn takes a few)
RANGE_PAGE = 10000

# gRPC status codes the gateway reports in "code"
_DEADLINE, _NOT_FOUND, _RESOURCE_EXHAUSTED, _OUT_OF_RANGE, _UNAVAILABLE = 4, 5, 8, 11, 14


def prefix_range(prefix: str) -> tuple:
    """(key, range_end) as bytes selecting every key that starts with prefix.

    range_end is the prefix with its last byte incremented (trailing 0xff
    bytes dropped first); b"\\0" means "to the end of the keyspace". etcd has
    no empty key, so the empty prefix becomes key b"\\0", range_end b"\\0"."""
    key = prefix.encode()
    end = bytearray(key)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return (key or b"\0"), b"\0"
    end[-1] += 1
    return key, bytes(end)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Optional[str]) -> bytes:
    return base64.b64decode(text) if text else b""


def _kv(d: dict) -> KeyValue:
    return KeyValue(_unb64(d.get("key")).decode(), _unb64(d.get("value")),
                    int(d.get("mod_revision", 0)), int(d.get("create_revision", 0)),
                    int(d.get("lease", 0)))


class _Refused(GlasswingError):
    """etcd answered with an error (a gRPC status through the gateway)."""

    def __init__(self, endpoint, path, code, message):
        super().__init__(f"etcd at {endpoint} refused {path}: {message}")
        self.code = code
        self.detail = message


class EtcdKV:
    def __init__(self, endpoint: str):
        url = urllib.parse.urlsplit(endpoint)
        try:
            port = url.port
        except ValueError:
            port = None
        if url.scheme != "http" or not url.hostname or not port or url.path not in ("", "/"):
            raise GlasswingError(f"etcd endpoint {endpoint!r} is not http://HOST:PORT")
        self.endpoint = f"http://{url.netloc}"
        self._host = url.hostname
        self._port = port
        self.netns_fd = None  # namespace to open connections in, if not the caller's

    def __repr__(self):
        return f"EtcdKV({self.endpoint!r})"

    # --- transport -----------------------------------------------------

    def _connect(self, body: bytes, path: str, read_timeout: float):
        conn = http.client.HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT)
        try:
            if self.netns_fd is None:
                conn.connect()
            else:  # a forwarder of a simulated node reaches the store from the host's namespace
                from dataplane.host import netns
                here = netns.self_fd()
                try:
                    with netns.entered(self.netns_fd, here):
                        conn.connect()
                finally:
                    os.close(here)
            conn.sock.settimeout(read_timeout)
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def _unreachable(self, e: BaseException) -> Unavailable:
        why = str(e) or type(e).__name__
        return Unavailable(f"etcd at {self.endpoint} is unreachable: {why}")

    def _error(self, path: str, status: int, data: bytes) -> GlasswingError:
        try:
            doc = json.loads(data)
            # unary errors: {"error", "code", "message"}; stream errors: {"grpc_code", "message", ...}
            code = int(doc.get("code", doc.get("grpc_code", 0)))
            message = doc.get("message") or doc.get("error") or ""
        except (ValueError, AttributeError):
            code, message = 0, data[:200].decode(errors="replace") or f"HTTP {status}"
        if code in (_UNAVAILABLE, _DEADLINE) or status in (502, 503, 504):
            return Unavailable(f"etcd at {self.endpoint} is unavailable: {message}")
        return _Refused(self.endpoint, path, code, message)

    def _call(self, path: str, body: dict, stream: bool = False) -> dict:
        """POST body as JSON; the decoded answer (of a streaming call, the
        first message's "result")."""
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            conn, resp = self._connect(data, path, REQUEST_TIMEOUT)
            try:
                answer = resp.readline() if stream else resp.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None
        if resp.status != 200:
            raise self._error(path, resp.status, answer)
        try:
            doc = json.loads(answer)
        except ValueError:
            raise GlasswingError(f"etcd at {self.endpoint} sent a malformed answer to {path}: "
                                 f"{answer[:100]!r}") from None
        if stream:
            if "error" in doc:
                err = doc["error"]
                raise self._error(path, 200, json.dumps(err).encode() if isinstance(err, dict) else answer)
            doc = doc.get("result", {})
        return doc

    # --- reading -------------------------------------------------------

    def get(self, key: str) -> Optional[KeyValue]:
        doc = self._call("/v3/kv/range", {"key": _b64(key.encode())})
        kvs = doc.get("kvs")
        return _kv(kvs[0]) if kvs else None

    def range(self, prefix: str) -> tuple:
        key, end = prefix_range(prefix)
        for _attempt in range(3):
            out, rev, start = [], 0, key
            try:
                while True:
                    body = {"key": _b64(start), "range_end": _b64(end), "limit": str(RANGE_PAGE)}
                    if rev:
                        body["revision"] = str(rev)
                    doc = self._call("/v3/kv/range", body)
                    if not rev:
                        rev = int(doc["header"]["revision"])
                    kvs = doc.get("kvs", [])
                    out.extend(map(_kv, kvs))
                    if not doc.get("more") or not kvs:
                        return out, rev
                    start = _unb64(kvs[-1]["key"]) + b"\0"
            except _Refused as e:
                if e.code != _OUT_OF_RANGE:  # "required revision has been compacted"
                    raise
        raise GlasswingError(f"etcd at {self.endpoint}: range of {prefix!r} kept being compacted")

    def revision(self) -> int:
        doc = self._call("/v3/kv/range", {"key": _b64(b"\0"), "keys_only": True})
        return int(doc["header"]["revision"])

    def watch(self, prefix: str, after: int, timeout: float) -> list:
        key, end = prefix_range(prefix)
        body = json.dumps({"create_request": {"key": _b64(key), "range_end": _b64(end),
                                              "start_revision": str(after + 1)}}).encode()
        deadline = time.monotonic() + max(timeout, 0.0)
        created = polled = False
        try:
            # Until etcd confirms the watch, a silence means etcd is in trouble.
            conn, resp = self._connect(body, "/v3/watch", max(timeout, CONNECT_TIMEOUT))
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None
        try:
            if resp.status != 200:
                raise self._error("/v3/watch", resp.status, resp.read())
            while True:
                if created:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        if polled:
                            return []
                        remaining = 0.05  # history etcd already has follows "created" at once
                    polled = True
                    conn.sock.settimeout(remaining)
                try:
                    line = resp.readline()
                except (socket.timeout, TimeoutError):
                    if created:
                        return []
                    raise
                if not line:
                    raise Unavailable(f"etcd at {self.endpoint} closed the watch of {prefix!r}")
                msg = json.loads(line)
                if "error" in msg:
                    err = msg["error"]
                    raise self._error("/v3/watch", 200,
                                      json.dumps(err).encode() if isinstance(err, dict) else line)
                result = msg.get("result", {})
                compact = int(result.get("compact_revision", 0))
                if compact:
                    raise Compacted(f"watch of {prefix!r} after revision {after}: etcd at "
                                    f"{self.endpoint} kept history only from revision {compact}")
                if result.get("canceled"):
                    raise GlasswingError(f"etcd at {self.endpoint} canceled the watch of {prefix!r}: "
                                         f"{result.get('cancel_reason', 'no reason given')}")
                created = created or bool(result.get("created"))
                events = result.get("events")
                if events:
                    return [Event("delete" if ev.get("type") == "DELETE" else "put",
                                  _unb64(ev["kv"].get("key")).decode(),
                                  _unb64(ev["kv"].get("value")),
                                  int(ev["kv"].get("mod_revision", 0)))
                            for ev in events]
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None
        except ValueError as e:
            raise GlasswingError(f"etcd at {self.endpoint} sent a malformed watch answer: {e}") from None
        finally:
            conn.close()

    # --- writing -------------------------------------------------------

    def commit(self, txn: Txn) -> int:
        validate_txn(txn)
        compare = [{"key": _b64(k.encode()), "target": "MOD", "result": "EQUAL",
                    "mod_revision": str(rev)} for k, rev in txn.compares.items()]
        success = []
        for k, (value, lease) in txn.puts.items():
            put = {"key": _b64(k.encode()), "value": _b64(bytes(value))}
            if lease:
                put["lease"] = str(lease)
            success.append({"request_put": put})
        for k in txn.deletes:
            success.append({"request_delete_range": {"key": _b64(k.encode())}})
        if not success and not compare:
            return self.revision()
        body = {"compare": compare, "success": success}
        try:
            doc = self._call("/v3/kv/txn", body)
        except _Refused as e:
            low = e.detail.lower()
            if "too many operations" in low or "too large" in low or "larger than max" in low \
                    or e.code == _RESOURCE_EXHAUSTED:
                size = len(json.dumps(body))
                raise GlasswingError(
                    f"etcd at {self.endpoint} refused a txn of {len(compare) + len(success)} "
                    f"operations ({size} bytes of JSON) as too big: {e.detail}; split the change "
                    f"or raise etcd's --max-txn-ops / --max-request-bytes") from None
            if e.code == _NOT_FOUND and "lease" in low:
                leases = sorted({lease for _v, lease in txn.puts.values() if lease})
                raise GlasswingError(f"etcd at {self.endpoint}: lease {', '.join(map(str, leases))} "
                                     f"not found (expired or revoked)") from None
            raise
        if not doc.get("succeeded"):
            keys = ", ".join(repr(k) for k in list(txn.compares)[:3])
            more = f" and {len(txn.compares) - 3} more" if len(txn.compares) > 3 else ""
            raise Conflict(f"txn compares failed at etcd revision {doc['header']['revision']}: "
                           f"one of {keys}{more} changed")
        return int(doc["header"]["revision"])

    def grant(self, ttl: int) -> int:
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 1:
            raise GlasswingError(f"a lease ttl must be a whole number of seconds >= 1, not {ttl!r}")
        return int(self._call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        # A streaming RPC: the gateway answers one message per request line.
        # An unknown or expired lease comes back without "TTL".
        result = self._call("/v3/lease/keepalive", {"ID": str(lease)}, stream=True)
        return max(int(result.get("TTL", 0)), 0)

    def revoke(self, lease: int) -> None:
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease)})
        except _Refused as e:
            if e.code != _NOT_FOUND:
                raise

    def close(self) -> None:
        pass
