"""The registry and config center: nodes, pods, services and config objects
kept in a key-value backend (kv_file on the node, or etcd), presented to the
rest of the code as one document.

Keys (all under /glasswing/):
    meta                               cluster id (JSON)
    nodes/NAME, pods/NAME              node-local facts (JSON)
    config/service/NS/NAME             Service (protobuf; a record in the document)
    config/{route,trafficpolicy,...}/NS/NAME   other config (protobuf; its typed mirror from
                                       snapshot.py in the document, see codec.py)
    endpoints/NODE/NS/SVC/POD:PORT     published by the node's forwarder under
                                       its lease, with health (JSON)
    index/KIND                         a guard bumped by every write of KIND

A transaction reads everything, lets the caller change the document, then
commits only the keys that changed, compare-and-swap on each of them and on
the guard of every kind it touched: two writers that read the same state
cannot both commit, so no update is lost and no VIP is handed out twice.

The document is the store layer's working copy (records and typed config objects, changed in
transactions and by watch events); snapshot(doc) is what the rest of the dataplane reads.
"""
import contextlib
import json
import secrets

from google.protobuf import json_format

from dataplane.errors import GlasswingError
from dataplane.store import codec, kinds
from dataplane.store import snapshot as snap
from dataplane.store.kv import Conflict, Txn

PREFIX = "/glasswing/"
META = PREFIX + "meta"
CONFIG_KINDS = tuple(k.section for k in kinds.CONFIG_KINDS)  # the sections of doc["config"]


# ---------------------------------------------------------------- services

def service_to_dict(msg) -> dict:
    s = msg.spec
    hc = json_format.MessageToDict(s.health_check, preserving_proto_field_name=True) \
        if s.HasField("health_check") else None
    return {
        "namespace": msg.metadata.namespace or "default", "name": msg.metadata.name,
        "labels": dict(msg.metadata.labels), "vip": s.vip, "vip6": s.vip6, "ip_families": list(s.ip_families),
        "ports": [{"port": p.port, "target": p.target_port or p.port, "protocol": p.protocol,
                   "name": p.name} for p in s.ports],
        "endpoints": [{"pod": e.pod or None, "port": e.port or None, "address": e.address or None,
                       "address6": e.address6 or None, "weight": e.weight or 1, "zone": e.zone, "labels": dict(e.labels)} for e in s.endpoints],
        "selector": dict(s.selector) or None, "health_check": hc,
    }


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
            doc["config"][sub][service_key(ns, name)] = codec.to_typed(msg)
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
        msg = codec.to_message(service_snapshot(key, svc))
        out[f"{PREFIX}config/{kinds.SERVICE.section}/{key}"] = msg.SerializeToString(deterministic=True)
    for sub, objs in doc["config"].items():
        for key, obj in objs.items():
            out[f"{PREFIX}config/{sub}/{key}"] = codec.to_message(obj).SerializeToString(deterministic=True)
    return out


# ---------------------------------------------------------------- snapshot

def _frozen(labels) -> snap.Frozen:
    return snap.Frozen(labels) if labels else snap.EMPTY


def service_snapshot(key: str, d: dict) -> snap.Service:
    """The typed Service for a service record of the document."""
    hc = d.get("health_check")
    return snap.Service(
        metadata=snap.Metadata(name=d.get("name", key), namespace=d.get("namespace", "default"),
                               labels=_frozen(d.get("labels"))),
        spec=snap.ServiceSpec(
            vip=d.get("vip") or "", vip6=d.get("vip6") or "", ip_families=tuple(d.get("ip_families") or ()),
            ports=tuple(snap.ServicePort(name=p.get("name") or "", port=p["port"], target_port=p["target"],
                                         protocol=p.get("protocol") or "") for p in d["ports"]),
            selector=_frozen(d.get("selector")),
            endpoints=tuple(snap.StaticEndpoint(pod=e.get("pod") or "", port=e.get("port") or 0,
                                                address=e.get("address") or "", address6=e.get("address6") or "",
                                                labels=_frozen(e.get("labels")),
                                                zone=e.get("zone") or "", weight=e.get("weight") or 1)
                            for e in d.get("endpoints") or ()),
            health_check=snap.HealthCheck(**hc) if hc else None))


def _published(_key: str, e: dict) -> snap.PublishedEndpoint:
    return snap.PublishedEndpoint(service=e["service"], service_port=e["service_port"], pod=e["pod"],
                                  node=e["node"], ip=e["ip"], port=e["port"], health=e.get("health") or "unknown",
                                  zone=e.get("zone") or "", weight=e.get("weight") or 1,
                                  labels=_frozen(e.get("labels")), ip6=e.get("ip6") or "")


def _pod(name: str, p: dict) -> snap.Pod:
    return snap.Pod(name=name, node=p["node"], ip=p.get("ip") or "", ip6=p.get("ip6") or "", namespace=p.get("namespace") or "default",
                    labels=_frozen(p.get("labels")), fail_mode=p.get("fail_mode") or "open",
                    zone=p.get("zone") or "")


def _node(name: str, n: dict) -> snap.Node:
    return snap.Node(name=name, ip=n.get("ip") or "", zone=n.get("zone") or "", pod_cidr=n.get("pod_cidr") or "")


_RECORDS = {"nodes": _node, "pods": _pod, "services": service_snapshot, "endpoints": _published}


def snapshot(doc: dict, previous: snap.Snapshot = None) -> snap.Snapshot:
    """The typed, immutable Snapshot of a document (as read(), decode() or a watch keep it).
    Sections a document lacks are empty.

    previous: a Snapshot made from an earlier state of the same document. The typed object of
    each node, pod, service and published endpoint whose record is still the very same object
    is reused rather than made again, so a change costs what it touches. Only for documents
    whose records are replaced, never changed in place, as apply_put and apply_delete do."""
    before = previous.records if previous is not None else {}
    records, typed = {}, {}
    for section, make in _RECORDS.items():
        old, kept, out = before.get(section, {}), {}, {}
        for key, rec in doc.get(section, {}).items():
            hit = old.get(key)
            obj = hit[1] if hit is not None and hit[0] is rec else make(key, rec)
            out[key], kept[key] = obj, (rec, obj)
        records[section], typed[section] = kept, snap.Frozen(out)
    config = doc.get("config", {})
    mesh = config.get(kinds.MESH_SETTINGS.section, {}).get(
        kinds.MESH_SETTINGS.doc_key("", kinds.MESH_SETTINGS_NAME))
    return snap.Snapshot(
        revision=doc.get("revision", 0), cluster=doc.get("cluster"), **typed,
        endpoint_objects=snap.Frozen(config.get(kinds.ENDPOINT.section, {})),
        routes=snap.Frozen(config.get(kinds.ROUTE.section, {})),
        traffic_policies=snap.Frozen(config.get(kinds.TRAFFIC_POLICY.section, {})),
        mesh=mesh.spec if mesh is not None else None, records=records)


def guard_of(key: str) -> str:
    parts = key[len(PREFIX):].split("/")
    kind = parts[0] if parts[0] != "config" else f"config-{parts[1]}"
    return f"{PREFIX}index/{kind}"


class Registry:
    def __init__(self, kv, location: str = ""):
        self.kv = kv
        self.location = location
        # The store revision of this registry's last transaction: the revision it committed at,
        # or the one it read when it changed nothing. Followers that have reached it (a
        # forwarder's admin status "revision") have seen the transaction's changes.
        self.last_revision = 0

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
        self.last_revision = doc["revision"]

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
