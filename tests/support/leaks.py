"""What a test run may leave behind in the kernel, read with ip and bpftool."""
import json
import os
import subprocess

from dataplane.host import cgroups


def snapshot(cluster_prefix: str = "gw-") -> dict:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    base = os.path.join(cgroups.cgroup2_root(), "glasswing")
    cg = sorted(d for d, _s, _f in os.walk(base)) if os.path.isdir(base) else []
    pins = sorted(os.path.join(d, f) for d, _s, fs in os.walk("/sys/fs/bpf/glasswing") for f in fs)
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True,
                                      text=True).stdout or "[]")
    ours = sorted(p["id"] for p in progs if p.get("name", "").startswith("gw_"))
    routes = [r for r in subprocess.run(["ip", "route", "show"], capture_output=True,
                                        text=True).stdout.splitlines() if "198.18." in r or "198.19." in r]
    procs = subprocess.run(["pgrep", "-f", "glasswing.*up --foreground"], capture_output=True,
                           text=True).stdout.split()
    return {"netns": sorted(n.split()[0] for n in ns if n.startswith(cluster_prefix)),
            "cgroups": cg, "pins": pins, "programs": ours, "routes": routes,
            "forwarders": procs}


def assert_clean(before: dict, after: dict) -> None:
    for key in before:
        new = sorted(set(after[key]) - set(before[key]))
        assert not new, f"left behind ({key}): {new}"
