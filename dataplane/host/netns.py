"""Network namespaces: named ones under /run/netns, and switching the calling
thread into one and back (sockets keep the namespace they were made in, which
is how the forwarder owns listeners inside every pod)."""
import contextlib
import ctypes
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


def self_fd() -> int:
    """A handle on the calling thread's own namespace, to come back to."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
