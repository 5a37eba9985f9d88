"""The registry and config center: nodes, pods, services and config objects
kept in a key-value backend (kv_file on the node, or etcd), presented to the
rest of the code as one document.

Keys (all under /glasswing/):
    meta                               cluster id (JSON)
    nodes/NAME, pods/NAME              node-local facts (JSON)
    config/service/NS/NAME             Service (protobuf)
    config/{route,trafficpolicy,...}/NS/NAME   other config (protobuf)
    endpoints/NODE/NS/SVC/POD:PORT     published by the node's forwarder under
                                       its lease, with health (JSON)
    index/KIND                         a guard bumped by every write of KIND

A transaction reads everything, lets the caller change the document, then
commits only the keys that changed, compare-and-swap on each of them and on
the guard of every kind it touched: two writers that read the same state
cannot both commit, so no update is lost and no VIP is handed out twice.
"""
import contextlib
import json
import secrets

from google.protobuf import json_format

from dataplane.errors import GlasswingError
from dataplane.store import kinds
from dataplane.store.kv import Conflict, Txn

PREFIX = "/glasswing/"
META = PREFIX + "meta"
CONFIG_KINDS = tuple(k.section for k in kinds.CONFIG_KINDS)  # the sections of doc["config"]


def _pb():
    from dataplane.proto import config_pb2
    return config_pb2


# ---------------------------------------------------------------- services

def service_to_dict(msg) -> dict:
    s = msg.spec
    hc = json_format.MessageToDict(s.health_check, preserving_proto_field_name=True) \
        if s.HasField("health_check") else None
    return {
        "namespace": msg.metadata.namespace or "default", "name": msg.metadata.name,
        "labels": dict(msg.metadata.labels), "vip": s.vip,
        "ports": [{"port": p.port, "target": p.target_port or p.port, "protocol": p.protocol,
                   "name": p.name} for p in s.ports],
        "endpoints": [{"pod": e.pod or None, "port": e.port or None, "address": e.address or None,
                       "weight": e.weight or 1, "zone": e.zone, "labels": dict(e.labels)} for e in s.endpoints],
        "selector": dict(s.selector) or None, "health_check": hc,
    }


def service_from_dict(d: dict):
    pb = _pb()
    msg = pb.Service()
    msg.metadata.name, msg.metadata.namespace = d["name"], d.get("namespace", "default")
    msg.metadata.labels.update(d.get("labels") or {})
    s = msg.spec
    s.vip = d["vip"]
    for p in d["ports"]:
        s.ports.add(port=p["port"], target_port=p["target"], protocol=p.get("protocol") or "",
                    name=p.get("name") or "")
    for e in d.get("endpoints") or ():
        ep = s.endpoints.add(pod=e.get("pod") or "", port=e.get("port") or 0,
                             address=e.get("address") or "", weight=e.get("weight") or 1,
                             zone=e.get("zone") or "")
        ep.labels.update(e.get("labels") or {})
    s.selector.update(d.get("selector") or {})
    if d.get("health_check"):
        json_format.ParseDict(d["health_check"], s.health_check)
    return msg


def service_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


# ---------------------------------------------------------------- document

def _empty() -> dict:
    return {"cluster": None, "revision": 0, "nodes": {}, "pods": {}, "services": {},
            "config": {k: {} for k in CONFIG_KINDS}, "endpoints": {}}


def decode(kvs, revision: int) -> dict:
    """The document for a range of key-values."""
    doc = _empty()
    doc["revision"] = revision
    for kv in kvs:
        apply_put(doc, kv.key, kv.value)
    return doc


def apply_put(doc: dict, key: str, value: bytes) -> None:
    parts = key[len(PREFIX):].split("/")
    kind = parts[0]
    if kind == "meta":
        doc["cluster"] = json.loads(value)["cluster"]
    elif kind in ("nodes", "pods") and len(parts) == 2:
        doc[kind][parts[1]] = json.loads(value)
    elif kind == "config" and len(parts) == 4:
        sub, ns, name = parts[1:]
        k = kinds.BY_SECTION.get(sub)
        if k is None:
            return
        msg = k.message()
        msg.ParseFromString(value)
        if k is kinds.SERVICE:
            doc["services"][service_key(ns, name)] = service_to_dict(msg)
        else:
            doc["config"][sub][service_key(ns, name)] = msg
    elif kind == "endpoints":
        doc["endpoints"][key] = json.loads(value)


def apply_delete(doc: dict, key: str) -> None:
    parts = key[len(PREFIX):].split("/")
    kind = parts[0]
    if kind in ("nodes", "pods") and len(parts) == 2:
        doc[kind].pop(parts[1], None)
    elif kind == "config" and len(parts) == 4:
        sub, ns, name = parts[1:]
        if sub == kinds.SERVICE.section:
            doc["services"].pop(service_key(ns, name), None)
        elif sub in doc["config"]:
            doc["config"][sub].pop(service_key(ns, name), None)
    elif kind == "endpoints":
        doc["endpoints"].pop(key, None)


def encode(doc: dict) -> dict:
    """{key: bytes} of what a transaction may write (endpoints are the forwarders')."""
    out = {}
    if doc["cluster"]:
        out[META] = json.dumps({"cluster": doc["cluster"]}).encode()
    for kind in ("nodes", "pods"):
        for name, rec in doc[kind].items():
            out[f"{PREFIX}{kind}/{name}"] = json.dumps(rec, sort_keys=True).encode()
    for key, svc in doc["services"].items():
        out[f"{PREFIX}config/{kinds.SERVICE.section}/{key}"] = service_from_dict(svc).SerializeToString(deterministic=True)
    for sub, objs in doc["config"].items():
        for key, msg in objs.items():
            out[f"{PREFIX}config/{sub}/{key}"] = msg.SerializeToString(deterministic=True)
    return out


def guard_of(key: str) -> str:
    parts = key[len(PREFIX):].split("/")
    kind = parts[0] if parts[0] != "config" else f"config-{parts[1]}"
    return f"{PREFIX}index/{kind}"


class Registry:
    def __init__(self, kv, location: str = ""):
        self.kv = kv
        self.location = location

    def read(self) -> dict:
        """The whole document; cluster is None until the first write made it."""
        kvs, rev = self.kv.range(PREFIX)
        return decode(kvs, rev)

    @contextlib.contextmanager
    def transaction(self):
        """Yield the document; commit what changed, or raise Conflict if
        someone else changed a kind this writer touched in the meantime."""
        kvs, rev = self.kv.range(PREFIX)
        mods = {kv.key: kv.mod_revision for kv in kvs}
        doc = decode(kvs, rev)
        if doc["cluster"] is None:
            doc["cluster"] = secrets.token_hex(3)
        before = encode(doc)
        yield doc
        after = encode(doc)
        txn = Txn()
        guards = set()
        for key, value in after.items():
            if before.get(key) != value or key not in mods:
                txn.puts[key] = (value, 0)
                txn.compares[key] = mods.get(key, 0)
                guards.add(guard_of(key))
        for key in before.keys() - after.keys():
            txn.deletes.append(key)
            txn.compares[key] = mods.get(key, 0)
            guards.add(guard_of(key))
        for g in guards:
            txn.compares[g] = mods.get(g, 0)
            txn.puts[g] = (str(rev).encode(), 0)
        if txn.puts or txn.deletes:
            doc["revision"] = self.kv.commit(txn)

    def update(self, fn, attempts: int = 20):
        """Run fn(doc) in a transaction, again on conflict: for changes with
        no side effects outside the store (apply, delete)."""
        for _ in range(attempts):
            try:
                with self.transaction() as doc:
                    result = fn(doc)
                return result
            except Conflict:
                continue
        raise GlasswingError(f"store {self.location}: too many concurrent writers, try again")
