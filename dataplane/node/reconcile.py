"""The store watch and the reconcile: the store document turned into this node's config.

Reconciler is the one place where the forwarder reads the store document's config, through the
typed Snapshot the store layer makes of it (registry.snapshot): reconcile(doc) brings, in
order, the pods attached here (sync_pods), the published endpoints (publish), the catalog with
the policy state, route tables and HTTP policies made from it, the DNS upstream, and the BPF
maps (map_sync.desired) in line with doc. health_changed() does the same after
a health checker's status changed, with the document as it is.

Others read the result: catalog, policies (the Policies given), http_policy(service, port),
dns_suffix(), and doc (the document as this node knows it; the watch and the publisher
change it in place, then reconcile).

watch() follows the store's changes until cancelled. While the store is away it keeps the
last good config (store_lost holds when it left, errors["store"] says so) and reconciles with
a full read when it returns; a compacted revision is answered with a full read too.
"""
import asyncio
import logging
import time

from dataplane.http.proxy import ServicePolicy as HttpPolicy
from dataplane.http.route import RouteTable
from dataplane.kernel.map_sync import ServiceIds, desired
from dataplane.store import registry
from dataplane.store.catalog import Catalog
from dataplane.store.kv import Compacted

log = logging.getLogger("glasswing.forwarder")


class Reconciler:
    def __init__(self, *, store, node: str, doc: dict, policies, resolver, sync_pods, cgroup_ids,
                 publish, errors: dict):
        """store: the Registry; doc: the document read at start; policies: the Policies
        state, updated here; resolver: the DNS resolver (its upstream is set here);
        sync_pods(want): attach and detach pods to match want ({name: pod record} of this
        node); cgroup_ids(): {pod name: cgroup id} of the attached pods; publish(): publish
        this node's endpoints. maps (a MapState) is set by the forwarder once it has one."""
        self.store, self.node = store, node
        self.doc = doc
        self.policies, self.resolver = policies, resolver
        self._sync_pods, self._cgroup_ids, self._publish = sync_pods, cgroup_ids, publish
        self.errors = errors
        self.maps = None
        self.svc_ids = ServiceIds()
        self.snapshot = registry.snapshot(doc)  # what catalog, policies and routes were built from
        self.catalog = Catalog(self.snapshot)
        self.routes = {}  # service key -> http.route.RouteTable, from the Route objects
        self.http_policies = {}  # (service, port) -> HttpPolicy, made on first use per reconcile
        self.store_lost = None  # monotonic time the store went away

    def reconcile(self, doc: dict) -> None:
        self.doc = doc
        self._sync_pods({n: p for n, p in doc["pods"].items() if p["node"] == self.node})
        self._publish()
        self._set_catalog(registry.snapshot(doc, self.snapshot))
        mesh = self.snapshot.mesh
        upstream = mesh.upstream_dns if mesh is not None else ""
        host, _, port = upstream.rpartition(":")
        self.resolver.upstream = (host, int(port)) if upstream else None
        changed = self.maps.apply(desired(self.catalog, self.snapshot, self.node, self._cgroup_ids(),
                                          self.svc_ids))
        log.debug("revision %s: %d map entries changed", doc["revision"], changed)

    def health_changed(self) -> None:
        self._publish()
        self._set_catalog(registry.snapshot(self.doc, self.snapshot))
        self.maps.apply(desired(self.catalog, self.snapshot, self.node, self._cgroup_ids(), self.svc_ids))

    def _set_catalog(self, snapshot) -> None:
        """A store Snapshot: the catalog built from it, and the policy state and route tables
        brought in line with it."""
        self.snapshot = snapshot
        self.catalog = Catalog(snapshot)
        node = snapshot.nodes.get(self.node)
        self.policies.update(self.catalog, snapshot, local_zone=node.zone if node else "")
        self.routes = self._route_tables(snapshot)
        self.http_policies = {}  # sessions ask per request, so the next request sees the change

    def _route_tables(self, snapshot) -> dict:
        """{service key: RouteTable}. A Route names a service of its own namespace; when two
        name the same one, the first by key wins (as for TrafficPolicy)."""
        tables = {}
        for rkey in sorted(snapshot.routes):
            route = snapshot.routes[rkey]
            skey = f"{rkey.split('/', 1)[0]}/{route.spec.service}"
            if skey in tables:
                continue
            try:
                tables[skey] = RouteTable(route.spec)
                self.errors.pop(f"route {rkey}", None)
            except Exception as e:  # noqa: BLE001 - a bad route must not stop the others
                self.errors[f"route {rkey}"] = str(e)
        return tables

    def http_policy(self, service: str, port: int) -> HttpPolicy:
        """The current HTTP policy of a service port: asked by sessions per request."""
        hp = self.http_policies.get((service, port))
        if hp is None:
            svc = self.policies.port(service, port).service
            hp = self.http_policies[(service, port)] = HttpPolicy(
                routes=self.routes.get(service), rate_limit=svc.bucket,
                retry_budget=svc.budget, breaker=svc.breaker)
        return hp

    def dns_suffix(self):
        """MeshSettings' DNS suffix, or None."""
        mesh = self.snapshot.mesh
        return mesh.dns_suffix if mesh is not None else None

    async def watch(self) -> None:
        """Follow the store's changes; keep serving the last good config while
        it is away, and resync when it returns."""
        backoff = 0.1
        while True:
            try:
                if self.store_lost is not None:
                    self.reconcile(await asyncio.to_thread(self.store.read))
                    log.info("store is back after %.1fs", time.monotonic() - self.store_lost)
                    self.store_lost = None
                    self.errors.pop("store", None)
                events = await asyncio.to_thread(self.store.kv.watch, registry.PREFIX,
                                                 self.doc["revision"], 1.0)
                backoff = 0.1
                if events:
                    for ev in events:
                        if ev.kind == "put":
                            registry.apply_put(self.doc, ev.key, ev.value)
                        else:
                            registry.apply_delete(self.doc, ev.key)
                        self.doc["revision"] = ev.revision
                    self.reconcile(self.doc)
            except Compacted:
                self.reconcile(await asyncio.to_thread(self.store.read))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - store away: serve what we have
                if self.store_lost is None:
                    self.store_lost = time.monotonic()
                    log.error("store unavailable, serving the last good config: %s", e)
                self.errors["store"] = f"unavailable for {time.monotonic() - self.store_lost:.0f}s: {e}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def caught_up(self, timeout: float = 10.0):
        """Wait until the watch has reconciled every change up to the store's revision at the
        time of asking: None, or why not within timeout seconds. Reconciles nothing itself, so
        a change is reconciled once, from the watch."""
        target = await asyncio.to_thread(self.store.kv.revision)
        deadline = time.monotonic() + timeout
        while self.doc["revision"] < target:
            if time.monotonic() >= deadline:
                return (f"the watch is at revision {self.doc['revision']}, the store at {target}, "
                        f"after {timeout:g}s")
            await asyncio.sleep(0.01)
        return None

    def status(self) -> dict:
        return {"revision": self.doc["revision"],
                "store": "unavailable" if self.store_lost is not None else "ok",
                "services": len(self.doc["services"]),
                "map_updates": self.maps.updates if self.maps else 0}
