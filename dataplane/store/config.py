"""`glasswing apply`, `get` and `delete`: validated documents into the
registry and back out. One apply is one transaction: all its documents are
stored, or none (a conflict with a concurrent writer retries the whole
apply, which has no side effect outside the store)."""
from dataplane.store import codec, kinds
from dataplane.store import registry as reg
from dataplane.store import schema as cs
from dataplane.store import snapshot as snap
from dataplane.store import services as svcs
from dataplane.store import vips
from dataplane.errors import GlasswingError

kind_of = kinds.kind_of  # a user's spelling ("svc", "policies") -> kind name


def _doc_key(d: cs.Document) -> str:
    return kinds.get(d.kind).doc_key(d.namespace, d.name)


def apply(registry, documents: list) -> list:
    """Store every document; returns [(kind, key, "created"|"configured"|"unchanged")]."""
    def change(doc):
        out = []
        taken4, taken6 = vips.taken(doc["services"])
        for d in documents:
            key = _doc_key(d)
            if d.kind == "Service":
                new = reg.service_to_dict(d.message)
                old = doc["services"].get(key)
                try:
                    vips.assign(new, taken4, taken6, old)
                except vips.VipError as e:
                    raise GlasswingError(f"{d.file}: document {d.index}: spec.{e.field}: {e}") from None
                action = "unchanged" if old == new else ("configured" if old else "created")
                doc["services"][key] = new
            else:
                section = doc["config"][kinds.get(d.kind).section]
                old, new = section.get(key), codec.to_typed(d.message)
                action = "unchanged" if old == new else ("configured" if old else "created")
                section[key] = new
            out.append((d.kind, key, action))
        return out
    return registry.update(change)


def get(doc: dict, kind: str, name: str = None) -> list:
    """Documents (dicts as cs.to_dict makes them) of a kind, or one of them."""
    if kind == "Service":
        items = {k: reg.service_snapshot(k, v) for k, v in doc["services"].items()}
    elif kind == "Endpoint":
        items = dict(doc["config"]["endpoint"])
        items.update(_published(doc))
    else:
        items = doc["config"][kinds.get(kind).section]
    if name is not None:
        key = _lookup_key(kind, name)
        if key not in items:
            raise GlasswingError(f"no {kind} {name!r}")
        return [cs.to_dict(codec.to_message(items[key]), kind)]
    return [cs.to_dict(codec.to_message(items[k]), kind) for k in sorted(items)]


def _published(doc) -> dict:
    """Endpoints the forwarders registered, as Endpoint objects keyed NS/SVC:PORT/POD:PORT."""
    out = {}
    for e in doc["endpoints"].values():
        ns, svc = e["service"].split("/", 1)
        out[f"{ns}/{svc}:{e['service_port']}/{e['pod']}:{e['port']}"] = snap.Endpoint(
            metadata=snap.Metadata(name=f"{e['pod']}-{e['port']}"[:40].rstrip("-"), namespace=ns),
            spec=snap.EndpointSpec(service=svc, address=e["ip"], address6=e.get("ip6") or "", port=e["port"],
                                   health=e["health"],
                                   node=e["node"], pod=e["pod"], weight=e.get("weight", 1),
                                   zone=e.get("zone", "")))
    return out


def _lookup_key(kind, name) -> str:
    if not kinds.get(kind).namespaced:
        return kinds.get(kind).doc_key("", name)
    return svcs.key_of(name) if "/" in name or kind != "Endpoint" else f"default/{name}"


def delete(registry, kind: str, name: str) -> str:
    key = _lookup_key(kind, name)

    def change(doc):
        section = doc["services"] if kind == "Service" else doc["config"][kinds.get(kind).section]
        if key not in section:
            raise GlasswingError(f"no {kind} {name!r}")
        del section[key]
    registry.update(change)
    return key
