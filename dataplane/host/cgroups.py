"""cgroup v2 directories for pods and forwarders: find the mount, create,
join, identify (the cgroup id BPF sees is the directory's inode), remove."""
import errno
import os
import time

from dataplane.errors import GlasswingError


def cgroup2_root() -> str:
    """The cgroup v2 mount: /sys/fs/cgroup on systemd hosts, .../unified on hybrid ones."""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return fields[1]
    raise GlasswingError("no cgroup v2 mount found in /proc/self/mounts")


def resolve(path: str) -> str:
    """An absolute path inside the cgroup v2 mount, or one relative to it."""
    root = cgroup2_root()
    full = path if path.startswith(root + "/") or path == root else os.path.join(root, path.lstrip("/"))
    full = os.path.normpath(full)
    if not full.startswith(root + "/"):
        raise GlasswingError(f"cgroup {path!r} is not inside the cgroup v2 mount {root}")
    return full


def create(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=False)
    except FileExistsError:
        raise GlasswingError(f"cgroup {path} already exists") from None


def ensure(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def cgroup_id(path: str) -> int:
    return os.stat(path).st_ino


def join(path: str, pid: int = 0) -> None:
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid or os.getpid()))


def pids(path: str) -> list:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def remove(path: str, kill: bool = True, timeout: float = 3.0) -> None:
    """Kill what runs in the cgroup (and below), then remove it, deepest first."""
    if not os.path.isdir(path):
        return
    for sub, dirs, _files in os.walk(path, topdown=False):
        if kill:
            _kill(sub, timeout)
        try:
            os.rmdir(sub)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise GlasswingError(f"cannot remove cgroup {sub}: {e.strerror}") from None


def _kill(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        live = pids(path)
        if not live:
            return
        for pid in live:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise GlasswingError(f"processes {live} in cgroup {path} did not exit")
        time.sleep(0.02)
