"""Endpoint publishing: this node's pods registered as endpoints of the services that select
them, under the node's lease, with the health its checkers see.

The Publisher holds the lease (granted on start, kept alive every LEASE_TTL/3, revoked on
stop so that the endpoints leave the store at once) and one health Checker per published
endpoint whose service asks for checks. publish() writes only what changed, in one store
transaction, and applies the write to the document it was given (doc(), the reconciler's),
so the next reconcile sees it. A checker whose status changes calls on_health() soon (from
the event loop), and the reconciler then publishes and rebuilds the catalog and maps.

If the lease ran out while the store was away, keepalive takes a new one and publishes
everything anew. A failed write is kept in errors["publish"] and retried on the next change
or keepalive.
"""
import asyncio
import json
import logging

from dataplane.policy.health import Checker
from dataplane.settings import LEASE_TTL
from dataplane.store import registry
from dataplane.store import services as svcs
from dataplane.store.kv import Txn

log = logging.getLogger("glasswing.forwarder")


class Publisher:
    def __init__(self, *, kv, node: str, doc, attached, connect_local, errors: dict, on_health):
        """kv: the store's KV; doc(): the current store document; attached(pod): whether the
        pod is attached here; connect_local(pod, ip, port): a connection to the app for
        health checks (the dialer's); on_health(): a checker's status changed."""
        self.kv, self.node = kv, node
        self._doc, self._attached, self._connect_local = doc, attached, connect_local
        self._errors, self._on_health = errors, on_health
        self.lease = 0
        self.checkers = {}  # endpoint key -> (Checker, its check settings)

    def grant(self) -> None:
        self.lease = self.kv.grant(LEASE_TTL)

    def revoke(self) -> None:
        """Our endpoints leave the store now, not when the lease runs out."""
        if self.lease:
            try:
                self.kv.revoke(self.lease)
            except Exception as e:  # noqa: BLE001 - the lease expires by itself
                log.warning("revoking lease: %s", e)

    def stop_checkers(self) -> None:
        for checker, _check in self.checkers.values():
            checker.stop()

    async def keepalive(self) -> None:
        """Keep the lease alive until cancelled."""
        while True:
            await asyncio.sleep(LEASE_TTL / 3)
            try:
                if await asyncio.to_thread(self.kv.keepalive, self.lease) == 0:
                    # the lease ran out while the store was away: publish anew
                    self.lease = await asyncio.to_thread(self.kv.grant, LEASE_TTL)
                    doc = self._doc()
                    for key in self.published_keys():
                        registry.apply_delete(doc, key)
                    self.publish()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the watch reports the store's state
                log.debug("keepalive: %s", e)

    def published_keys(self) -> list:
        mine = f"{registry.PREFIX}endpoints/{self.node}/"
        return [k for k in self._doc()["endpoints"] if k.startswith(mine)]

    def publish(self) -> None:
        """Register this node's pods as endpoints of the services that select
        them, under our lease; only what changed is written."""
        doc = self._doc()
        want = {}
        checks = {}
        zone = (doc["nodes"].get(self.node) or {}).get("zone", "")
        for key, svc in doc["services"].items():
            static = {e["pod"]: e for e in svc["endpoints"] if e.get("pod")}
            for m in svc["ports"]:
                for pod, rec, port in svcs.endpoints(doc, svc, m):
                    if rec["node"] != self.node or not self._attached(pod):
                        continue
                    ekey = f"{registry.PREFIX}endpoints/{self.node}/{key}/{m['port']}/{pod}:{port}"
                    health = "healthy"
                    if svc.get("health_check"):
                        checks[ekey] = (svc["health_check"], pod, rec["ip"], port)
                        cur = self.checkers.get(ekey)
                        health = cur[0].state.status if cur and cur[1] == svc["health_check"] else "unknown"
                    want[ekey] = json.dumps({"service": key, "service_port": m["port"], "pod": pod,
                                             "node": self.node, "ip": rec["ip"], "port": port,
                                             "ip6": rec.get("ip6") or "",  # pods made before IPv6 have none
                                             "health": health,
                                             "zone": static.get(pod, {}).get("zone") or rec.get("zone") or zone,
                                             # subsets (canary splits) select by these
                                             "labels": {**(rec.get("labels") or {}),
                                                        **(static.get(pod, {}).get("labels") or {})},
                                             "weight": static.get(pod, {}).get("weight") or 1},
                                            sort_keys=True).encode()
        self._sync_checkers(checks)
        mine = f"{registry.PREFIX}endpoints/{self.node}/"
        have = {k: json.dumps(v, sort_keys=True).encode() for k, v in doc["endpoints"].items()
                if k.startswith(mine)}
        txn = Txn(puts={k: (v, self.lease) for k, v in want.items() if have.get(k) != v},
                  deletes=[k for k in have if k not in want])
        if not (txn.puts or txn.deletes):
            return
        try:
            rev = self.kv.commit(txn)
        except Exception as e:  # noqa: BLE001 - retried on the next change or keepalive
            self._errors["publish"] = str(e)
            return
        self._errors.pop("publish", None)
        for k, (v, _lease) in txn.puts.items():
            registry.apply_put(doc, k, v)
        for k in txn.deletes:
            registry.apply_delete(doc, k)
        # Only when no other writer committed since the revision we follow: moving past one would
        # make the watch (which asks for events after doc["revision"]) skip its change. Otherwise
        # our own writes come back through the watch, where applying them again changes nothing.
        if rev == doc["revision"] + 1:
            doc["revision"] = rev

    def _sync_checkers(self, checks: dict) -> None:
        """One checker per registered endpoint whose service asks for checks."""
        for ekey in [k for k, (_c, check) in self.checkers.items() if checks.get(k, (None,))[0] != check]:
            self.checkers.pop(ekey)[0].stop()
        for ekey, (check, pod, ip, port) in checks.items():
            if ekey not in self.checkers:
                connect = (lambda p=pod, i=ip, n=port: self._connect_local(p, i, n))
                checker = Checker(connect, check, f"{ip}:{port}", lambda _status: self._health_soon())
                self.checkers[ekey] = (checker, check)

    def _health_soon(self):
        asyncio.get_running_loop().call_soon(self._on_health)

    def status(self) -> dict:
        return {"endpoints_published": len(self.published_keys())}
