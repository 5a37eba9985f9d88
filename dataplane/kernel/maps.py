"""Pinned BPF maps opened by path and used through the ctypes mirrors.

Map contents are control state kept by the forwarder; programs are owned
separately (bpf_programs). Opening by pin lets `glasswing down` clean up
after a forwarder that was killed."""
import os

from dataplane.kernel import syscalls as bpf_sys
from dataplane.errors import GlasswingError

MAP_NAMES = ("services", "backends", "pods", "config", "orig", "tuples")


class PinnedMap:
    def __init__(self, path: str, key_type, value_type):
        self.path, self.key_type, self.value_type = path, key_type, value_type
        try:
            self.fd = bpf_sys.obj_get(path)
        except OSError as e:
            raise GlasswingError(f"cannot open pinned map {path}: {e.strerror}") from None

    def update(self, key, value) -> None:
        try:
            bpf_sys.map_update(self.fd, key, value)
        except OSError as e:
            raise GlasswingError(f"updating map {self.path} failed: {e.strerror}") from None

    def delete(self, key) -> bool:
        return bpf_sys.map_delete(self.fd, key)

    def get(self, key):
        value = self.value_type()
        return value if bpf_sys.map_lookup(self.fd, key, value) else None

    def keys(self):
        out = []
        key, nxt = None, self.key_type()
        while bpf_sys.map_next_key(self.fd, key, nxt):
            out.append(self.key_type.from_buffer_copy(nxt))
            key = self.key_type.from_buffer_copy(nxt)
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
