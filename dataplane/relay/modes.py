"""The relays a forwarder can carry opaque connections with, and the default.

- kernel (the default): the relay engine (below) carries a connection's first 16 turns; a
  connection of small messages then goes to the kernel (bpf/kernel_relay.c: a stream verdict
  redirects each skb to the other socket, no wake-up of the forwarder per message), and a
  direction that carries bulk (an skb of 16 KiB or more) comes back to the engine, which
  copies it (a socket in a SOCKHASH cannot be spliced). Against engine in the full run of
  docs/bench: round trip p50 29.6 against 35.7 us on one node (direct 17.4) and 40.6
  against 59.7 us across nodes; new connections/s unchanged; busy keep-alive HTTP across
  nodes 26.8k against 34.6k req/s and one bulk stream across nodes 10.9 against 12.5 Gbit/s
  (the kernel's redirects go through one kworker per CPU). On from Linux 6.18 only
  (dataplane/kernel/relay_gate.py); below it, kernel runs as engine;
- engine: the relay engine's thread (dataplane/relay/engine_relays.py), C without the GIL, with
  auto's choice of copy or splice per direction. Measured against auto in one
  run (`glasswing bench --quick`): round trip p50 36 against 43 us on one node and 62
  against 87 us across nodes, p99 69 against 101 and 96 against 155 us, HTTP keep-alive
  +5 to +11%, new connections/s and single-stream throughput within noise;
- auto, splice, copy: in the event loop (dataplane/relay/relay.py with dataplane/relay/movers.py).

GLASSWING_RELAY sets the default for `glasswing up` and for every forwarder started by
dataplane/node/control.py (the lab, the demo, the benches, the tests).
"""
from dataplane import settings
from dataplane.relay.movers import MODES as LOOP_MODES

MODES = ("engine", "kernel", *LOOP_MODES)
ENGINE_MODES = {"engine": "auto", "kernel": "kernel"}  # relay -> the engine's mode
BUILT_IN_DEFAULT = "kernel"


def default() -> str:
    """GLASSWING_RELAY (settings.relay_mode()), else the built-in default."""
    return settings.relay_mode() or BUILT_IN_DEFAULT


def check(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"relay mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode
