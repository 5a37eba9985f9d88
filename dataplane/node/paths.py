"""Where a node's forwarder keeps its things, and undoing what a killed one left.

node_paths: the run directory (pidfile, admin socket, log) under run_root and the BPF pin
directory under settings.PIN_ROOT, both per cluster and node. cleanup_stale: detach the hook
programs from the node's pod cgroups and its own, remove its cgroup, unpin its maps and
delete its pidfile and admin socket (glasswing up and down call it).
"""
import os

from dataplane.host import cgroups
from dataplane.host import topology
from dataplane.kernel import maps as bpf_maps
from dataplane.kernel.programs import detach_stale
from dataplane.settings import PIN_ROOT


def node_paths(run_root: str, cluster: str, node: str) -> dict:
    cluster = cluster or "none"  # an empty store has no cluster id yet
    run = os.path.join(run_root, cluster, node)
    return {"run": run, "pidfile": os.path.join(run, "forwarder.pid"),
            "admin": os.path.join(run, "admin.sock"), "log": os.path.join(run, "forwarder.log"),
            "pins": os.path.join(PIN_ROOT, cluster, node)}


def cleanup_stale(doc: dict, node: str, run_root: str) -> list:
    """Undo what a killed forwarder of this node left: attachments, pins, cgroup, pidfile."""
    done = []
    if doc["cluster"] is None:
        return done
    paths = node_paths(run_root, doc["cluster"], node)
    cg = topology.forwarder_cgroup(doc["cluster"], node)
    for pod in doc["pods"].values():
        if pod["node"] == node and os.path.isdir(pod["cgroup"]) and detach_stale(pod["cgroup"]):
            done.append(f"programs on {pod['cgroup']}")
    if os.path.isdir(cg):
        if detach_stale(cg):
            done.append(f"programs on {cg}")
        cgroups.remove(os.path.dirname(cg))
        done.append(f"cgroup {cg}")
    if os.path.isdir(paths["pins"]):
        bpf_maps.unpin_all(paths["pins"])
        done.append(f"pins {paths['pins']}")
    for p in (paths["pidfile"], paths["admin"]):
        if os.path.exists(p):
            os.unlink(p)
    return done
