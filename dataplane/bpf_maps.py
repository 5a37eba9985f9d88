"""Pinned BPF maps opened by path and used through the ctypes mirrors.

Map contents are control state kept by the forwarder; programs are owned
separately (bpf_programs). Opening by pin lets `glasswing down` clean up
after a forwarder that was killed."""
import ctypes as C
import os

from .errors import GlasswingError

MAP_NAMES = ("services", "backends", "pods", "config", "orig", "tuples")


def _lib():
    from bcc.libbcc import lib  # imported late: unit tests run without bcc
    return lib


class PinnedMap:
    def __init__(self, path: str, key_type, value_type):
        self.path, self.key_type, self.value_type = path, key_type, value_type
        lib = _lib()
        lib.bpf_obj_get.restype = C.c_int
        self.fd = lib.bpf_obj_get(path.encode())
        if self.fd < 0:
            raise GlasswingError(f"cannot open pinned map {path}: {os.strerror(C.get_errno() or 2)}")

    def update(self, key, value) -> None:
        if _lib().bpf_update_elem(self.fd, C.byref(key), C.byref(value), 0) < 0:
            raise GlasswingError(f"updating map {self.path} failed: {os.strerror(C.get_errno())}")

    def delete(self, key) -> bool:
        return _lib().bpf_delete_elem(self.fd, C.byref(key)) == 0

    def get(self, key):
        value = self.value_type()
        if _lib().bpf_lookup_elem(self.fd, C.byref(key), C.byref(value)) < 0:
            return None
        return value

    def keys(self):
        lib, out = _lib(), []
        key, nxt = self.key_type(), self.key_type()
        ptr = None
        while lib.bpf_get_next_key(self.fd, ptr, C.byref(nxt)) == 0:
            out.append(self.key_type.from_buffer_copy(nxt))
            C.memmove(C.byref(key), C.byref(nxt), C.sizeof(key))
            ptr = C.byref(key)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def unpin_all(pin_dir: str) -> None:
    """Remove every pin of a node and its directory (and the parents, if empty)."""
    if not os.path.isdir(pin_dir):
        return
    for name in os.listdir(pin_dir):
        os.unlink(os.path.join(pin_dir, name))
    d = pin_dir
    while d.startswith("/sys/fs/bpf/glasswing"):
        try:
            os.rmdir(d)
        except OSError:
            break
        d = os.path.dirname(d)
