"""Relay engine chooser: the C engine (dataplane.relay._engine_c) when built, else the Python twin
(dataplane/relay/engine_py.py, whose docstring is the reference for both).

GLASSWING_PUMP picks it as it picks the byte pumps (dataplane/relay/pump.py): python forces the
twin, cython requires the C engine, unset or auto takes the C engine when built.
"""
from dataplane.relay import engine_py
from dataplane.relay.pump import built, chosen

_impl = chosen("dataplane.relay._engine_c")
if _impl is None:
    _impl, IMPL = engine_py, "python"
else:
    IMPL = "c"
Engine = _impl.Engine


def twins() -> dict:
    """Available implementations, {"c": Engine, "python": Engine}, for tests."""
    out = {"python": engine_py.Engine}
    c = built("dataplane.relay._engine_c")
    if c is not None:
        out["c"] = c.Engine
    return out
