"""Network namespaces: named ones under /run/netns (made, attached and removed
as `ip netns add/attach/delete` do, so `ip netns exec` and the mesh see the
same names), switching the calling thread into one and back (sockets keep the
namespace they were made in, which is how the forwarder owns listeners and
netlink sockets inside every pod), and per-namespace sysctls.

Only the calling thread ever changes namespace, and it always comes back: every
switch saves the thread's own namespace first (/proc/1/ns/net cannot be opened
here) and returns to it in a finally."""
import contextlib
import ctypes
import errno
import os

from dataplane.errors import GlasswingError

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def path(name: str) -> str:
    return name if name.startswith("/") else os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def open_fd(name: str) -> int:
    try:
        return os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise GlasswingError(f"network namespace {name!r} does not exist") from None


_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """setns(2) for the calling thread (os.setns arrives only in Python 3.12)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(fd: int, home_fd: int):
    """Run the block in namespace fd, then return to home_fd (this thread only)."""
    setns(fd)
    try:
        yield
    finally:
        setns(home_fd)


@contextlib.contextmanager
def inside(name: str):
    """Run the block with the calling thread in the named namespace, then bring
    it back to the namespace it was in; both handles are closed on every path."""
    fd = open_fd(name)
    try:
        home = self_fd()
        try:
            with entered(fd, home):
                yield
        finally:
            os.close(home)
    finally:
        os.close(fd)


def self_fd() -> int:
    """A handle on the calling thread's own namespace, to come back to."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _pyroute2():
    """pyroute2's netns helpers, imported on first use (the package costs ~100 ms to load)."""
    from pyroute2 import netns as pyroute2_netns
    return pyroute2_netns


def _unshare() -> None:
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def create(name: str) -> None:
    """A new empty namespace named name, as `ip netns add`. The calling thread
    unshares into it just long enough for pyroute2 to bind-mount it under
    /run/netns (no child process), then returns home."""
    if exists(name):
        raise GlasswingError(f"cannot create network namespace {name}: File exists")
    pyroute2_netns = _pyroute2()  # loaded before the thread leaves home
    home = self_fd()
    try:
        try:
            _unshare()
            try:
                pyroute2_netns.attach(name, "thread-self")
            finally:
                setns(home)
        except OSError as e:
            if e.errno != errno.EEXIST:  # never remove a name someone else just made
                _remove_quietly(name)
            raise GlasswingError(f"cannot create network namespace {name}: {_reason(e)}") from None
    finally:
        os.close(home)


def attach(name: str, pid: int) -> None:
    """Name the namespace of process pid, as `ip netns attach NAME PID`."""
    if exists(name):
        raise GlasswingError(f"cannot attach network namespace {name}: File exists")
    if not os.path.exists(f"/proc/{int(pid)}/ns/net"):
        raise GlasswingError(f"cannot attach network namespace {name}: no process {pid}")
    try:
        _pyroute2().attach(name, int(pid))
    except OSError as e:
        if e.errno != errno.EEXIST:
            _remove_quietly(name)
        raise GlasswingError(f"cannot attach network namespace {name} of process {pid}: {_reason(e)}") from None


def delete(name: str, check: bool = True) -> None:
    """Unmount and remove the name, as `ip netns delete` (the namespace itself
    goes when nothing else holds it). check=False: quiet if it is gone already."""
    try:
        _pyroute2().remove(name)
    except OSError as e:
        if check:
            raise GlasswingError(f"cannot delete network namespace {name}: {_reason(e)}") from None


def _remove_quietly(name: str) -> None:
    try:
        _pyroute2().remove(name)
    except OSError:
        pass


def pids(name: str) -> list:
    """The processes whose network namespace is the named one, as `ip netns pids`."""
    return _pyroute2().ns_pids().get(name, [])


def sysctl(key: str, value: str, netns: str = None) -> None:
    """Set a sysctl, e.g. net.ipv4.ip_forward, in the named namespace (None: the
    caller's). /proc/sys/net belongs to the namespace of the thread that opens it,
    so the file is opened from inside (no `ip netns exec`, which remounts /sys)."""
    file = os.path.join("/proc/sys", *key.split("."))
    try:
        with contextlib.ExitStack() as stack:
            if netns:
                stack.enter_context(inside(netns))
            with open(file, "w") as f:
                f.write(str(value))
    except OSError as e:
        where = f" in netns {netns}" if netns else ""
        raise GlasswingError(f"cannot set sysctl {key}={value}{where}: {_reason(e)}") from None


def _reason(e: OSError) -> str:
    return e.strerror or os.strerror(e.errno or 0) or str(e)
