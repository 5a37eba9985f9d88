"""What `glasswing` commands do, as functions: change the store, tell the
forwarders, start and stop them. The CLI only parses and prints."""
import glob
import os
import subprocess
import sys
import time

from dataplane.node import admin
from dataplane.host import topology
from dataplane.store import services as svcs
from dataplane.kernel.programs import check_bpf_available
from dataplane.errors import GlasswingError
from dataplane.node.paths import cleanup_stale, node_paths
from dataplane.node.process import wait_gone
from dataplane.store.kv import Unavailable
from dataplane.store.kv_open import open_kv
from dataplane.store.registry import Registry
from dataplane.settings import LOCAL_NODE, run_dir, store_url

APPLY_TIMEOUT = 10.0  # seconds for the forwarders to apply a change (they usually take milliseconds)


class Control:
    def __init__(self, node: str = LOCAL_NODE, store: str = None, run: str = None):
        self.node = node
        self.store_url = store or store_url()
        self.run_root = run or run_dir()
        self._store = None

    @property
    def store(self) -> Registry:
        if self._store is None:
            self._store = Registry(open_kv(self.store_url), self.store_url)
        return self._store

    def require_root(self):
        if os.geteuid() != 0:
            raise GlasswingError("must run as root: namespaces, cgroups and BPF need it")

    # ------------------------------------------------------------ forwarders

    def paths(self, node=None, doc=None):
        node = node or self.node
        if doc is None:
            try:
                doc = self.store.read()
            except Unavailable:
                # the forwarder still answers while the store is away: find its
                # run directory without the cluster id the store would give
                found = glob.glob(os.path.join(self.run_root, "*", node, "admin.sock"))
                if len(found) == 1:
                    return node_paths(self.run_root, found[0].split(os.sep)[-3], node)
                raise
        return node_paths(self.run_root, doc["cluster"], node)

    def forwarder_pid(self, node=None, doc=None):
        """pid of the running forwarder of node, or None (a stale pidfile is ignored)."""
        try:
            with open(self.paths(node, doc)["pidfile"]) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if b"--foreground" in cmd else None

    def wait_applied(self, nodes=None, revision: int = None, timeout: float = APPLY_TIMEOUT) -> dict:
        """Wait until the running forwarders (all, or of `nodes`) have reconciled the store up to
        `revision` (by default this Control's last store transaction): each reconciles from its
        own store watch, and its admin status reports the revision it has reached. Returns
        {node: status}, or {"ok": False, "error": ...} for a forwarder that did not answer.
        Raises GlasswingError naming the forwarders still behind after timeout seconds."""
        revision = self.store.last_revision if revision is None else revision
        doc = self.store.read()
        pending = {node: self.paths(node, doc)["admin"] for node in (nodes or list(doc["nodes"]))
                   if self.forwarder_pid(node, doc)}
        out = {}
        deadline = time.monotonic() + timeout
        while True:
            for node, path in list(pending.items()):
                try:
                    out[node] = admin.request(path, "status", timeout=max(deadline - time.monotonic(), 1.0))
                except GlasswingError as e:
                    out[node] = {"ok": False, "error": str(e)}
                if not out[node].get("ok") or out[node].get("revision", 0) >= revision:
                    del pending[node]
            if not pending:
                return out
            if time.monotonic() >= deadline:
                behind = ", ".join(f"{n} (at revision {out[n].get('revision')})" for n in sorted(pending))
                raise GlasswingError(f"the store is at revision {revision} but the forwarder of {behind} "
                                     f"did not catch up within {timeout:g}s; see `glasswing status`")
            time.sleep(0.01)

    # ------------------------------------------------------------ config

    def apply(self, documents: list) -> list:
        """Store validated documents (schema.load_all) in one transaction, then wait until the
        running forwarders have applied them; [(kind, key, action)] as config.apply."""
        from dataplane.store import config as config_store
        done = config_store.apply(self.store, documents)
        self.wait_applied()
        return done

    def delete(self, kind: str, name: str) -> str:
        """Delete a config object, then wait until the running forwarders have applied that."""
        from dataplane.store import config as config_store
        key = config_store.delete(self.store, kind, name)
        self.wait_applied()
        return key

    def up(self, timeout: float = 90.0, relay: str | None = None) -> dict:
        """relay: the forwarder's relay mode (dataplane/relay/modes.py; None: its default)."""
        from dataplane.relay import modes as relay_modes
        relay = relay or relay_modes.default()
        if relay not in relay_modes.MODES:
            raise GlasswingError(f"relay mode {relay!r} is not one of {', '.join(relay_modes.MODES)}")
        self.require_root()
        check_bpf_available()
        with self.store.transaction() as doc:
            topology.ensure_blackhole(topology.get_node(doc, self.node))
        doc = self.store.read()
        pid = self.forwarder_pid(doc=doc)
        if pid:
            raise GlasswingError(f"forwarder for node {self.node!r} is already running (pid {pid})")
        cleanup_stale(doc, self.node, self.run_root)
        paths = self.paths(doc=doc)
        os.makedirs(paths["run"], exist_ok=True)
        env = dict(os.environ, GLASSWING_STORE=self.store_url, GLASSWING_RUN_DIR=self.run_root)
        with open(paths["log"], "ab") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "glasswing", "--node", self.node, "up", "--foreground",
                                     "--relay", relay],
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                                    start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise GlasswingError(f"forwarder failed to start: {_last_line(paths['log'])}")
            if os.path.exists(paths["admin"]) and os.path.exists(paths["pidfile"]):
                try:
                    return admin.request(paths["admin"], "status", timeout=5)
                except GlasswingError:
                    pass
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        cleanup_stale(self.store.read(), self.node, self.run_root)
        raise GlasswingError(f"forwarder did not become ready within {timeout:.0f}s (log: {paths['log']})")

    def down(self, timeout: float = 15.0) -> list:
        self.require_root()
        doc = self.store.read()
        pid = self.forwarder_pid(doc=doc)
        done = []
        if pid:
            try:
                admin.request(self.paths(doc=doc)["admin"], "shutdown", timeout=5)
            except GlasswingError:
                os.kill(pid, 15)
            if not wait_gone(pid, timeout):
                os.kill(pid, 9)
                wait_gone(pid, 5)
            done.append(f"stopped forwarder pid {pid}")
        done += cleanup_stale(doc, self.node, self.run_root)
        topology.prune(doc["cluster"])
        return done

    def status(self) -> dict:
        if not self.forwarder_pid():
            return {"ok": False, "node": self.node, "running": False}
        st = admin.request(self.paths()["admin"], "status")
        st["running"] = True
        return st

    def hook_attachments(self) -> list:
        """[(where, missing hook names)] for the running forwarder of this node: its own
        cgroup ("forwarder") and the cgroup of each pod it serves ("pod NAME"), each
        checked with bpftool (kernel/programs.missing_hooks). [] when no forwarder runs."""
        from dataplane.kernel.programs import missing_hooks
        if not self.forwarder_pid():
            return []
        doc = self.store.read()
        served = self.status().get("pods", [])
        out = [("forwarder", missing_hooks(topology.forwarder_cgroup(doc["cluster"], self.node), "forwarder"))]
        for pod in served:
            rec = doc["pods"].get(pod)
            if rec is not None:
                out.append((f"pod {pod}", missing_hooks(rec["cgroup"], "pod")))
        return out

    # ------------------------------------------------------------ nodes

    def node_add(self, name):
        self.require_root()
        with self.store.transaction() as doc:
            return topology.add_node(doc, name)

    def node_rm(self, name):
        self.require_root()
        doc = self.store.read()
        if self.forwarder_pid(name, doc):
            raise GlasswingError(f"node {name!r} still runs a forwarder: `glasswing --node {name} down` first")
        with self.store.transaction() as doc:
            topology.remove_node(doc, name)
        topology.prune(doc["cluster"])

    # ------------------------------------------------------------ pods

    def pod_add(self, name, **kw) -> dict:
        self.require_root()
        with self.store.transaction() as doc:
            rec = topology.add_pod(doc, name, self.node, **kw)
        answers = self.wait_applied([self.node])
        st = answers.get(self.node)
        if st is not None and (not st.get("ok") or name not in st.get("pods", [])):
            why = (st.get("errors") or {}).get(f"pod {name}") or st.get("error") or "not attached"
            self.pod_rm(name)
            raise GlasswingError(f"forwarder could not attach pod {name!r}: {why}")
        return rec

    def pod_rm(self, name) -> None:
        self.require_root()
        with self.store.transaction() as doc:
            rec = topology.get_pod(doc, name)
            for svc in doc["services"].values():
                if any(ep.get("pod") == name for ep in svc["endpoints"]):
                    svc["endpoints"] = [ep for ep in svc["endpoints"] if ep.get("pod") != name]
        self.wait_applied([rec["node"]])  # its endpoints leave the forwarder before the pod goes
        with self.store.transaction() as doc:
            topology.remove_pod(doc, name)
        if not self.forwarder_pid(rec["node"], doc):
            from dataplane.kernel.programs import detach_stale
            if not rec["cgroup_owned"] and os.path.isdir(rec["cgroup"]):
                detach_stale(rec["cgroup"])
        topology.prune(doc["cluster"])

    def pod_exec(self, name, argv):
        from dataplane.host import cgroups
        from dataplane.host import netns
        self.require_root()
        rec = topology.get_pod(self.store.read(), name)
        if not argv:
            raise GlasswingError("pod exec needs a command after --")
        # The cgroup first: it decides which hooks apply. setns touches only the
        # network namespace (unlike `ip netns exec`, which remounts /sys).
        cgroups.join(rec["cgroup"])
        netns.setns(netns.open_fd(rec["netns"]))
        try:
            os.execvp(argv[0], argv)
        except FileNotFoundError:
            raise GlasswingError(f"command not found: {argv[0]}") from None

    # ------------------------------------------------------------ services

    def service_add(self, name, **kw) -> dict:
        self.require_root()
        rec = self.store.update(lambda doc: svcs.add_service(doc, name, **kw))
        self.wait_applied()
        return rec

    def service_rm(self, name) -> None:
        self.require_root()
        self.store.update(lambda doc: svcs.remove_service(doc, name))
        self.wait_applied()


def _last_line(path):
    try:
        with open(path) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return lines[-1] if lines else "no output"
    except OSError:
        return "no log"
