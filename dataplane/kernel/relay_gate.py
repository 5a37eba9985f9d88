"""Whether this kernel may carry relayed bytes itself (bpf/kernel_relay.c with the relay
engine's mode "kernel").

The kernel relay is on only from KERNEL_MIN, the oldest kernel it has been tested on. On
Linux 6.1 (the test VM's Debian kernel) tests/bpf/test_kernel_relay.py's 200-connection
test left 1 or 2 connections open after both ends closed, in two runs of two; sockmap's
TCP paths changed much between 6.1 and 6.18. Below KERNEL_MIN, mode "kernel" runs as
"engine" (the relay engine alone). GLASSWING_KERNEL_RELAY=on or off overrides the check.
"""
import os
import re

from dataplane import settings

KERNEL_MIN = (6, 18)


def kernel_version(release: str = None) -> tuple:
    m = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def supported(release: str = None) -> bool:
    force = settings.kernel_relay_override()
    return force == "on" if force else kernel_version(release) >= KERNEL_MIN


def why_not(release: str = None) -> str:
    """One line for doctor and status."""
    v = ".".join(map(str, kernel_version(release)))
    force = settings.kernel_relay_override()
    if force:
        return f"{force}: GLASSWING_KERNEL_RELAY={force} (kernel {v})"
    if supported(release):
        return f"on (kernel {v})"
    return f"off: kernel {v} is older than {KERNEL_MIN[0]}.{KERNEL_MIN[1]}, where it is tested (mode kernel runs as engine)"
