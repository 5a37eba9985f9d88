"""Whether this kernel may carry relayed bytes itself (bpf/kernel_relay.c with the relay
engine's mode "kernel").

Off on every kernel for now: tests/bpf/test_kernel_relay.py's 200-connection test leaves one
connection open after both of its ends closed (the engine never sees the FIN of the socket
whose peer closed second, so the other side stays in CLOSE-WAIT). On Linux 6.1 (the test
VM's Debian kernel) in two runs of two; on 6.18 in 2 of 15 runs on 2026-12-02, both before
and after the duplicated-segment fix in bpf/kernel_relay.c. A relay that can hold a closed
connection open is not one to run, opt-in or not, until that is found. KERNEL_MIN is the
oldest kernel it is on from once it is fixed (None: none yet); below it, mode "kernel" runs
as "engine" (the relay engine alone). GLASSWING_KERNEL_RELAY=on or off overrides the check
(on: for work on that bug; tests/bpf/test_kernel_relay.py then exercises the kernel).
"""
import os
import re

from dataplane import settings

KERNEL_MIN = None  # (major, minor) once the close hang above is fixed; None: off everywhere
WHY_OFF = "a closed connection is sometimes held open (relay_gate.py)"


def kernel_version(release: str = None) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def supported(release: str = None) -> bool:
    force = settings.kernel_relay_override()
    if force:
        return force == "on"
    return KERNEL_MIN is not None and kernel_version(release) >= KERNEL_MIN


def why_not(release: str = None) -> str:
    """One line for doctor and status."""
    v = ".".join(map(str, kernel_version(release)))
    force = settings.kernel_relay_override()
    if force:
        return f"{force}: GLASSWING_KERNEL_RELAY={force} (kernel {v})"
    if supported(release):
        return f"on (kernel {v})"
    if KERNEL_MIN is None:
        return f"off: kernel {v}: {WHY_OFF}; mode kernel runs as engine (GLASSWING_KERNEL_RELAY=on forces it)"
    return f"off: kernel {v} is older than {KERNEL_MIN[0]}.{KERNEL_MIN[1]}, where it is tested (mode kernel runs as engine)"
