"""Relay engine chooser: the C engine (dataplane._engine_c) when built, else the Python twin
(dataplane/engine_py.py, whose docstring is the reference for both).

GLASSWING_PUMP picks it as it picks the byte pumps (dataplane/pump.py): python forces the
twin, cython requires the C engine, unset or auto takes the C engine when built.
"""
import importlib

from . import engine_py
from .pump import CHOICE


def _load(required: bool):
    try:
        return importlib.import_module("dataplane._engine_c")
    except ImportError:
        if required:
            raise
        return None


_impl = None if CHOICE == "python" else _load(CHOICE == "cython")
if _impl is None:
    _impl, IMPL = engine_py, "python"
else:
    IMPL = "c"
Engine = _impl.Engine


def twins() -> dict:
    """Available implementations, {"c": Engine, "python": Engine}, for tests."""
    out = {"python": engine_py.Engine}
    c = _load(False)
    if c is not None:
        out["c"] = c.Engine
    return out
