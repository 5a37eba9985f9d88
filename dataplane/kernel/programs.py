"""The hook programs in bpf/ (kernel/hooks.py lists them) and their cgroup attachments.

bcc compiles and loads them in a child process (kernel/loader.py); `Programs`
holds their fds, owns every attachment it makes and undoes them in reverse
order in an idempotent close(). Programs share maps through pins under the
node's pin directory.
"""
import json
import os
import subprocess

from dataplane.kernel import loader as bpf_loader
from dataplane.kernel import syscalls as bpf_sys
from dataplane.kernel.hooks import HOOKS, OUR_NAMES
from dataplane.errors import GlasswingError

BPF_F_ALLOW_MULTI = 2  # coexist with programs others attach to the same cgroup
SK_SKB_STREAM_VERDICT = 5  # enum bpf_attach_type


def check_bpf_available() -> None:
    if os.geteuid() != 0:
        raise GlasswingError("must run as root: BPF programs, namespaces and cgroups need it")
    import importlib.util
    if importlib.util.find_spec("bcc") is None:  # not imported here: only the loader child needs it
        raise GlasswingError("bcc Python module not found: install python3-bpfcc "
                             "(make install links it into the venv)")
    with open("/proc/self/mounts") as f:
        if not any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in f):
            raise GlasswingError("bpffs is not mounted at /sys/fs/bpf: mount -t bpf bpf /sys/fs/bpf")


class Programs:
    """Loaded hook programs (fds handed over by kernel/loader.py) and the cgroup
    attachments made with them."""

    def __init__(self, pin_dir: str):
        self.pin_dir = pin_dir
        self._progs = {}     # hook function -> (prog fd, attach type number)
        self._attached = []  # (cgroup path, cgroup fd, hook), in attach order
        self.relay = {}      # the kernel relay's program and map fds (loader.RELAY_OBJECTS)

    def load(self) -> None:
        self._progs, self.relay = bpf_loader.load(self.pin_dir)
        # The verdict program on the relay's SOCKHASH: the attachment lives with the map, which
        # lives with our fds (nothing is pinned), so close() undoes it whatever happens.
        bpf_sys.prog_attach(self.relay["gw_kr_verdict"], self.relay["gw_kr_socks"],
                            SK_SKB_STREAM_VERDICT, 0)

    def prog_ids(self) -> set:
        return {_prog_id(fd) for fd, _t in self._progs.values()}

    def attach(self, cgroup: str, role: str) -> None:
        """Attach the hooks for role ("pod" or "forwarder"); all of them or none."""
        hooks = [h for h in HOOKS if (h.on_pods if role == "pod" else h.on_forwarder)]
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        done = []
        try:
            for hook in hooks:
                prog, atype = self._progs[hook.function]
                bpf_sys.prog_attach(prog, fd, atype, BPF_F_ALLOW_MULTI)
                done.append((cgroup, fd, hook))
        except OSError as e:
            for item in reversed(done):
                self._detach_one(*item)
            os.close(fd)
            raise GlasswingError(f"attaching BPF programs to {cgroup} failed: {e.strerror}") from None
        self._attached.extend(done)
        # A previous forwarder that was killed left its programs attached
        # (they kept pods working meanwhile); drop them now that ours run.
        detach_stale(cgroup, keep=self.prog_ids())

    def detach(self, cgroup: str) -> None:
        mine = [a for a in self._attached if a[0] == cgroup]
        for item in reversed(mine):
            self._detach_one(*item)
        self._attached = [a for a in self._attached if a[0] != cgroup]
        if mine:
            os.close(mine[0][1])

    def _detach_one(self, cgroup, fd, hook):
        prog, atype = self._progs[hook.function]
        try:
            bpf_sys.prog_detach(prog, fd, atype)
        except OSError:  # cgroup already gone: nothing left to detach
            pass

    def close(self) -> None:
        for cgroup in reversed(list(dict.fromkeys(c for c, _fd, _h in self._attached))):
            self.detach(cgroup)
        for fd, _t in self._progs.values():
            os.close(fd)
        self._progs.clear()
        if self.relay:
            try:
                bpf_sys.prog_detach(self.relay["gw_kr_verdict"], self.relay["gw_kr_socks"],
                                    SK_SKB_STREAM_VERDICT)
            except OSError:
                pass
            for fd in self.relay.values():
                os.close(fd)
            self.relay = {}


def _prog_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    return -1


def attached(cgroup: str) -> list:
    """[(prog id, bpftool attach type, name)] of our programs on a cgroup."""
    r = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return []
    return [(p["id"], p["attach_type"], p.get("name", "")) for p in json.loads(r.stdout)
            if p.get("name") in OUR_NAMES]


def missing_hooks(cgroup: str, role: str) -> list:
    """The hooks (kernel/hooks.py names: connect4, ...) that role ("pod" or "forwarder") needs and that are
    not attached to cgroup, by attach type and program name as bpftool reports them."""
    have = {(atype, name) for _id, atype, name in attached(cgroup)}
    return [h.name for h in HOOKS if (h.on_pods if role == "pod" else h.on_forwarder)
            and (h.bpftool_type, h.function) not in have]


def detach_stale(cgroup: str, keep: set = frozenset()) -> int:
    """Detach our programs left on a cgroup by an owner that died; returns how many."""
    n = 0
    for pid, atype, _name in attached(cgroup):
        if pid in keep:
            continue
        subprocess.run(["bpftool", "cgroup", "detach", cgroup, atype, "id", str(pid)],
                       capture_output=True)
        n += 1
    return n
