"""`glasswing bench registry`: how fast config reaches the kernel, and what
a big registry costs, on each store backend, measured in one run.

For each backend it builds a one-node lab, then reports:
- apply-to-map latency on a small registry: from the start of an apply
  (validate, commit) until the forwarder has the new service in its BPF map
  (median of several);
- a bulk apply of N services with M endpoints in all: time of the apply
  command, time until the forwarder's maps hold all of it, the forwarder's
  resident memory before and after;
- change latency at that scale: one endpoint changed, until its backend
  entry in the BPF map changes (median of several).
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from dataplane.store import schema as cs
from dataplane.store import config as config_store
from dataplane.kernel.addrs import ip16, ip_text
from dataplane.kernel.maps import PinnedMap
from dataplane.kernel.structs import BackendKey, BackendValue, SvcKey, SvcValue
from lab.cluster import Lab
from dataplane.settings import PIN_ROOT


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _svc_doc(name, vip, addresses, port=7000):
    return {"apiVersion": cs.API_VERSION, "kind": "Service", "metadata": {"name": name},
            "spec": {"vip": vip, "ports": [{"port": port}],
                     "endpoints": [{"address": a} for a in addresses]}}


def _vip(i):
    return f"198.19.{10 + i // 250}.{1 + i % 250}"


def _addr(i):
    return f"198.18.{100 + (i // 250) % 150}.{1 + i % 250}"


class _Maps:
    def __init__(self, lab, node):
        pins = os.path.join(PIN_ROOT, lab.doc["cluster"], node)
        self.services = PinnedMap(os.path.join(pins, "services"), SvcKey, SvcValue)
        self.backends = PinnedMap(os.path.join(pins, "backends"), BackendKey, BackendValue)

    def service(self, vip, port=7000):
        key = SvcKey(vip=ip16(vip), port=socket.htons(port), proto=6)
        return self.services.get(key)

    def backend_ips(self, vip, port=7000):
        svc = self.service(vip, port)
        if svc is None:
            return set()
        out = set()
        for slot in range(svc.count):
            be = self.backends.get(BackendKey(svc_id=svc.svc_id, slot=slot))
            if be is not None:
                out.add(ip_text(be.ip))
        return out

    def close(self):
        self.services.close()
        self.backends.close()


def _wait(pred, timeout=120.0, step=0.002):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the forwarder's maps did not catch up")
        time.sleep(step)
    return time.monotonic() - t0


def _apply(lab, docs):
    validated = [cs.Document("<bench>", i + 1, d["kind"], cs.validate(d, "<bench>", i + 1), d)
                 for i, d in enumerate(docs)]
    config_store.apply(lab.ctl().store, validated)


def measure(store_url: str, services: int, endpoints: int, samples: int, say=print) -> dict:
    out = {"store": (store_url or "file").split(":")[0]}
    with Lab("gwbench", store=store_url) as lab:
        lab.node("n1")
        lab.up("n1")
        pid = lab.ctl("n1").forwarder_pid()
        maps = _Maps(lab, "n1")
        try:
            out["rss_idle_mb"] = round(_rss_mb(pid), 1)
            small = []
            for i in range(samples):
                vip = f"198.19.9.{i + 1}"
                t0 = time.monotonic()
                _apply(lab, [_svc_doc(f"small{i}", vip, [_addr(i)])])
                _wait(lambda: maps.service(vip) is not None)
                small.append(time.monotonic() - t0)
            out["small_apply_to_map_ms"] = round(statistics.median(small) * 1000, 1)
            say(f"  {out['store']}: apply-to-map, small registry: {out['small_apply_to_map_ms']} ms (median of {samples})")

            per = max(1, endpoints // services)
            path = os.path.join(tempfile.mkdtemp(prefix="gwbench-"), "big.yaml")
            with open(path, "w") as f:
                docs = [_svc_doc(f"svc{i}", _vip(i), [_addr(i * per + j) for j in range(per)])
                        for i in range(services)]
                f.write(cs.dump_yaml(docs))
            glasswing = os.path.join(os.path.dirname(sys.executable), "glasswing")
            t0 = time.monotonic()
            r = subprocess.run([glasswing, "apply", "-f", path], env=lab.env, capture_output=True, text=True)
            t_apply = time.monotonic() - t0
            if r.returncode != 0:
                raise RuntimeError(f"bulk apply failed: {r.stderr.strip()}")
            last = _vip(services - 1)
            _wait(lambda: maps.service(last) is not None and len(maps.backend_ips(last)) == per, timeout=600)
            t_maps = time.monotonic() - t0
            os.unlink(path)
            out.update(services=services, endpoints=services * per, bulk_apply_s=round(t_apply, 2),
                       bulk_apply_to_maps_s=round(t_maps, 2), rss_loaded_mb=round(_rss_mb(pid), 1))
            say(f"  {out['store']}: {services} services / {services * per} endpoints: apply {t_apply:.2f} s, "
                f"in the maps after {t_maps:.2f} s, forwarder RSS {out['rss_idle_mb']} -> {out['rss_loaded_mb']} MB")

            changes = []
            for i in range(samples):
                idx = (i * 997) % services
                new = f"198.18.99.{i + 1}"
                t0 = time.monotonic()
                _apply(lab, [_svc_doc(f"svc{idx}", _vip(idx), [new])])
                _wait(lambda: maps.backend_ips(_vip(idx)) == {new}, timeout=60)
                changes.append(time.monotonic() - t0)
            out["change_to_map_ms"] = round(statistics.median(changes) * 1000, 1)
            out["change_to_map_max_ms"] = round(max(changes) * 1000, 1)
            say(f"  {out['store']}: one change at that scale reaches the maps in {out['change_to_map_ms']} ms "
                f"(median of {samples}, max {out['change_to_map_max_ms']})")
        finally:
            maps.close()
    return out


def run(backends=("file", "etcd"), services=10000, endpoints=50000, samples=5, say=print) -> list:
    from lab.etcd_server import EtcdServer
    results = []
    for backend in backends:
        say(f"{backend} backend:")
        if backend == "etcd":
            with EtcdServer() as etcd:
                results.append(measure(etcd.url, services, endpoints, samples, say))
        else:
            results.append(measure(None, services, endpoints, samples, say))
    return results
