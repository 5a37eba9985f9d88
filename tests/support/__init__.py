"""Helpers shared by the test tiers; test modules import from here, never from each other.

    wait      wait_until: poll a condition with a deadline (no fixed sleeps); ends_after and
              ends_before: timeouts checked by order on the loop's clock; run with a deadline
    need      skips for missing root/bpf/tools, REQUIRE_ALL, choosing a built twin
    sockets   loopback TCP pairs, payloads, writer/reader threads for relay tests; a listener,
              a connect, an echo app and refusing ports for the forwarder-role tests
    engine    driving the relay engine (hand over, wait for done, byte-exact runs)
    http      the HTTP proxy harness: scripted upstream servers, a proxy, a raw client
    mesh      the integration topology's helpers: peers, listening probes, the CLI
    leaks     what a run may leave behind in the kernel (netns, pins, programs)
    peers.py  the traffic programs run inside pods (a script, run by path)

conftest.py files keep only fixtures and hooks.
"""
