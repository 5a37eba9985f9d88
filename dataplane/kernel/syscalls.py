"""The few bpf(2) commands the forwarder needs, through ctypes: map access by
pinned path and cgroup attach/detach by fd. The forwarder uses these instead
of bcc, so LLVM (60 MB of it resident just for importing bcc, more after a
compile) never enters its process: programs are compiled and loaded by a
short-lived child (bpf_loader) that hands their fds over."""
import ctypes
import os
import platform
import struct

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_GET, PROG_ATTACH, PROG_DETACH = 7, 8, 9
ATTR_SIZE = 128  # enough for every command used here


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
    r = _libc.syscall(_NR_BPF, cmd, buf, ATTR_SIZE)
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return r


def _addr(obj) -> int:
    return ctypes.addressof(obj) if obj is not None else 0


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(path.encode())
    return _bpf(OBJ_GET, struct.pack("=QII", ctypes.addressof(p), 0, 0))


def map_lookup(fd: int, key, value) -> bool:
    try:
        _bpf(MAP_LOOKUP_ELEM, struct.pack("=IIQQQ", fd, 0, _addr(key), _addr(value), 0))
        return True
    except FileNotFoundError:
        return False


def map_update(fd: int, key, value, flags: int = 0) -> None:
    _bpf(MAP_UPDATE_ELEM, struct.pack("=IIQQQ", fd, 0, _addr(key), _addr(value), flags))


def map_delete(fd: int, key) -> bool:
    try:
        _bpf(MAP_DELETE_ELEM, struct.pack("=IIQQQ", fd, 0, _addr(key), 0, 0))
        return True
    except FileNotFoundError:
        return False


def map_next_key(fd: int, key, next_key) -> bool:
    """Fill next_key with the key after key (the first one when key is None)."""
    try:
        _bpf(MAP_GET_NEXT_KEY, struct.pack("=IIQQQ", fd, 0, _addr(key), _addr(next_key), 0))
        return True
    except FileNotFoundError:
        return False


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int) -> None:
    _bpf(PROG_ATTACH, struct.pack("=IIIII", target_fd, prog_fd, attach_type, flags, 0))


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    _bpf(PROG_DETACH, struct.pack("=IIII", target_fd, prog_fd, attach_type, 0))


def map_max_entries(fd: int) -> int:
    """max_entries of a loaded map (from /proc/self/fdinfo): for a BPF ring buffer, the size
    of its data area in bytes."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("max_entries:"):
                return int(line.split()[1])
    raise OSError(f"fd {fd} is not a BPF map")
