"""A throwaway cluster on this machine, for tests, the demo and benchmarks:
simulated nodes, pods, services and forwarders, and processes run inside
pods. Everything it makes is recorded and undone by release(), which is
idempotent and runs even when the code using the lab failed.

    node n1 (netns) ---- underlay bridge 198.18.0.0/24 ---- node n2 (netns)
     |  pods 198.18.1.0/24                                   |  pods 198.18.2.0/24
    client, server1                                         server2
"""
import os
import shutil
import signal
import subprocess
import tempfile

from dataplane.host import cgroups
from dataplane.host import netns
from dataplane.node.control import Control
from dataplane.store.kv import Unavailable


def pod_preexec(rec: dict):
    """For subprocess: join the pod's cgroup, then its namespace (this order:
    the cgroup decides which hooks apply, and no /sys remount is involved)."""
    cgroup, ns = rec["cgroup"], rec["netns"]

    def enter():
        cgroups.join(cgroup)
        netns.setns(netns.open_fd(ns))
    return enter


class Lab:
    def __init__(self, prefix: str = "gwlab", store: str = None):
        self.dir = tempfile.mkdtemp(prefix=f"{prefix}-")
        self.store_url = store or "file://" + os.path.join(self.dir, "state")
        self.run_root = os.path.join(self.dir, "run")
        self.env = dict(os.environ, GLASSWING_STORE=self.store_url, GLASSWING_RUN_DIR=self.run_root)
        self.procs = []
        self.nodes_up = []
        self.released = False
        self._pods = {}
        self._ctls = {}

    def ctl(self, node: str = "local") -> Control:
        if node not in self._ctls:
            self._ctls[node] = Control(node=node, store=self.store_url, run=self.run_root)
        return self._ctls[node]

    @property
    def doc(self) -> dict:
        d = self.ctl().store.read()
        self._pods = d["pods"]
        return d

    def pod_record(self, pod: str) -> dict:
        """A pod's record, from the last good read if the store is away (tests stop etcd)."""
        try:
            return self.doc["pods"][pod]
        except Unavailable:
            return self._pods[pod]

    def node(self, name):
        return self.ctl().node_add(name)

    def pod(self, name, node, **kw):
        return self.ctl(node).pod_add(name, **kw)

    def service(self, name, **kw):
        return self.ctl().service_add(name, **kw)

    def up(self, node):
        st = self.ctl(node).up()
        self.nodes_up.append(node)
        return st

    def admin(self, node, cmd, **args) -> dict:
        """One request to a running forwarder's admin socket (status, relay, sync)."""
        from dataplane.node import admin
        return admin.request(self.ctl(node).paths()["admin"], cmd, **args)

    def down(self, node):
        self.ctl(node).down()
        if node in self.nodes_up:
            self.nodes_up.remove(node)

    def spawn(self, pod: str, argv, **kw) -> subprocess.Popen:
        """Start argv inside a pod; killed by release() if still running."""
        rec = self.pod_record(pod)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(argv, preexec_fn=pod_preexec(rec), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(self, pod: str, argv, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        rec = self.pod_record(pod)
        kw.setdefault("capture_output", True)
        return subprocess.run(argv, preexec_fn=pod_preexec(rec), timeout=timeout, text=True, **kw)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        errors = []
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        doc = self.doc
        for node in list(doc["nodes"]):
            try:
                self.ctl(node).down()
            except Exception as e:  # noqa: BLE001 - go on undoing the rest
                errors.append(e)
        for pod in list(doc["pods"]):
            try:
                self.ctl().pod_rm(pod)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        for node in list(self.doc["nodes"]):
            try:
                self.ctl().node_rm(node)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False
