"""Byte pump chooser: the Cython pumps (dataplane.relay._pump_c) when built, else the Python twins.

Two loops, each in both twins: pump() (splice through a pipe, zero copy) and copy() (read
into a scratch buffer, write).

GLASSWING_PUMP=python forces the Python twin, GLASSWING_PUMP=cython requires the Cython one
(ImportError if it is not built); unset, empty or "auto" picks Cython when available.
See dataplane/relay/pump_py.py for the pump semantics (identical in both twins).
"""

import fcntl
import importlib
import os

from dataplane import settings
from dataplane.relay import pump_py

PIPE_SIZE = 1 << 20  # 1 MiB: fewer, larger splices; needs pipe-max-size >= 1 MiB (the default)


CHOICE = settings.pump_choice()  # once, at import: the twins are picked below


def built(module: str, required: bool = False):
    """The compiled extension `module` (dataplane.relay._pump_c, dataplane.relay._engine_c), or None when
    it is not built (ImportError instead when required)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if required:
            raise
        return None


def chosen(module: str):
    """The compiled extension as GLASSWING_PUMP picks it: None for python or when not built."""
    return None if CHOICE == "python" else built(module, CHOICE == "cython")


_impl = chosen("dataplane.relay._pump_c")
if _impl is None:
    _impl, IMPL = pump_py, "python"
else:
    IMPL = "cython"

pump = _impl.pump
copy = _impl.copy
SRC_EOF = _impl.SRC_EOF
DST_BLOCKED = _impl.DST_BLOCKED
SRC_DRAINED = _impl.SRC_DRAINED


def make_pipe() -> tuple[int, int]:
    """Return (r, w) of a non-blocking close-on-exec pipe, enlarged to 1 MiB if permitted."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # EPERM above /proc/sys/fs/pipe-max-size or the per-user pipe quota
        pass
    return r, w


def close_pipe(r: int, w: int) -> None:
    """Close both ends of a pipe from make_pipe() (bytes still in it are dropped)."""
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def twins() -> dict:
    """Available implementations, {"cython": module, "python": module}, for tests."""
    out = {}
    c = built("dataplane.relay._pump_c")
    if c is not None:
        out["cython"] = c
    out["python"] = pump_py
    return out
