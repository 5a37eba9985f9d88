"""The relays a forwarder can carry opaque connections with, and the default.

- engine (the default): the relay engine's thread (dataplane/relay/engine_relays.py), C
  without the GIL, with auto's choice of copy or splice per direction. Measured against auto
  in one run (`glasswing bench --quick`): round trip p50 36 against 43 us on one node and 62
  against 87 us across nodes, p99 69 against 101 and 96 against 155 us, HTTP keep-alive +5 to
  +11%, new connections/s and single-stream throughput within noise;
- kernel: the relay engine carries a connection's first 16 turns; a connection of small
  messages then goes to the kernel (bpf/kernel_relay.c: a stream verdict redirects each skb
  to the other socket, no wake-up of the forwarder per message), and a direction that carries
  bulk (an skb of 16 KiB or more) comes back to the engine, which copies it (a socket in a
  SOCKHASH cannot be spliced). Off on every kernel until a close hang is fixed
  (dataplane/kernel/relay_gate.py);
  there, kernel runs as engine;
- auto, splice, copy: in the event loop (dataplane/relay/relay.py with dataplane/relay/movers.py).

Why engine is the default (issue 14 item 5; docs/bench/relay-default.md has the table).
Three runs of `sudo glasswing bench datapath --quick` on the 2-vCPU VM, 2026-12-02, medians
of the runs' medians (min-max of the three), kernel against engine:
  Gbit/s, 1 stream        11.35 (11.34-12.82) against 11.32 (9.69-11.69) one node,
                          9.69 (7.83-10.95) against 9.24 (6.72-11.75) across nodes: even;
  RTT p50 us, 64 B        31.4 (30.4-32.9) against 35.3 (34.9-36.0) and 42.9 (42.0-43.4)
                          against 59.3 (57.3-64.1): kernel ahead in every run;
  RTT p99 us              56.4 (55.5-75.9) against 70.4 (69.6-76.8) and 87.8 (80.2-91.4)
                          against 111.9 (102.1-139.8): kernel ahead in 5 of 6;
  keep-alive HTTP req/s   45.1k (44.0-49.6k) against 55.9k (54.9-58.2k) and 26.0k
                          (16.5-26.3k) against 32.9k (25.3-33.4k): kernel 15 to 35% behind in
                          every run;
  new conn/s, HTTP close  7.28k against 7.47k one node (even), 3.57k (3.22-3.66k) against
                          2.90k (2.63-3.24k) across nodes (kernel ahead in all three runs,
                          though connections of one request never reach the kernel: not
                          explained yet).
The kernel wins the round trip of one connection at a time and loses the throughput of
many busy ones: its redirects are sent by one kworker per CPU, one wake-up per message,
where the engine's thread drains every ready socket per epoll wake-up. That holds on one
node and across nodes, so no per-connection rule the engine has separates the two: a
keep-alive connection and sockperf's ping-pong are both long-lived connections of small
messages, and KR_AFTER is a count of turns, not a rate: wrk's 16 connections each take
about 6,000 turns a second (past 16 in 3 ms), sockperf's one about 60,000, so any count that
lets the ping-pong in lets the keep-alive connections in seconds later.
The duplicated segment that tests/bpf/test_kernel_relay.py::test_bulk_after_small_messages_keeps_order
caught about 1 run in 40 when these runs were made is fixed (bpf/kernel_relay.c trims what
tcp_read_skb hands the verdict twice); the choice stands on the figures alone:
kernel is the better relay for latency-bound traffic over few
connections (`--relay kernel`: 4 us off a one-node round trip, 16 us across nodes), but the
default should still be engine: a mesh's default carries many busy keep-alive connections,
where kernel gives up a fifth of the requests per second (and falls below the HAProxy pair
across nodes); only a rerun of these three runs with kernel no longer behind on keep-alive
req/s would turn it back, or a rule on what the engine does not see today (its own load).

GLASSWING_RELAY sets the default for `glasswing up` and for every forwarder started by
dataplane/node/control.py (the lab, the demo, the benches, the tests).
"""
from dataplane import settings
from dataplane.relay.movers import MODES as LOOP_MODES

MODES = ("engine", "kernel", *LOOP_MODES)
ENGINE_MODES = {"engine": "auto", "kernel": "kernel"}  # relay -> the engine's mode
BUILT_IN_DEFAULT = "engine"  # by measurement: see the docstring


def default() -> str:
    """GLASSWING_RELAY (settings.relay_mode()), else the built-in default."""
    return settings.relay_mode() or BUILT_IN_DEFAULT


def check(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"relay mode must be one of {', '.join(MODES)}, not {mode!r}")
    return mode
