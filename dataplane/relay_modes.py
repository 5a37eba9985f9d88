"""The relays a forwarder can carry opaque connections with, and the default.

- engine (the default): the relay engine's thread (dataplane/engine_relays.py), C without
  the GIL, with auto's choice of copy or splice per direction. Measured against auto in one
  run (`glasswing bench --quick`): round trip p50 36 against 43 us on one node and 62
  against 87 us across nodes, p99 69 against 101 and 96 against 155 us, HTTP keep-alive
  +5 to +11%, new connections/s and single-stream throughput within noise;
- kernel: the relay engine with bytes in the kernel (bpf/kernel_relay.c: a stream verdict
  redirects each skb to the other socket, no wake-up of the forwarder per message) until a
  direction carries bulk (an skb of 16 KiB or more), which the engine then carries as auto
  without splice. Opaque connections only, as every relay here;
- auto, splice, copy: in the event loop (dataplane/relay.py with dataplane/movers.py).

GLASSWING_RELAY sets the default for `glasswing up` and for every forwarder started by
dataplane/control.py (the lab, the demo, the benches, the tests).
"""
import os

from .movers import MODES as LOOP_MODES

MODES = ("engine", "kernel", *LOOP_MODES)
ENGINE_MODES = {"engine": "auto", "kernel": "kernel"}  # relay -> the engine's mode
BUILT_IN_DEFAULT = "engine"


def default() -> str:
    return os.environ.get("GLASSWING_RELAY", "").strip() or BUILT_IN_DEFAULT


def check(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"relay mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode
