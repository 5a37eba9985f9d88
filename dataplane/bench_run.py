"""What every `glasswing bench` does around its measurements: Ctrl-C and SIGTERM still tear the
topology down, and the results land in a JSON file with the machine they were measured on."""
import contextlib
import json
import os
import signal
import sys


def _interrupt(*_):
    raise KeyboardInterrupt()


@contextlib.contextmanager
def torn_down(release, say):
    """Run the block; then release(), whatever happened (SIGTERM counts as Ctrl-C)."""
    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        say("\r" + " " * 80 + "\rtearing down")
        release()
        signal.signal(signal.SIGTERM, old)


def write_json(out_dir: str, name: str, **meta) -> str:
    """out_dir/name with the command, kernel and CPU count in front of meta; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump({"command": " ".join(sys.argv), "kernel": os.uname().release,
                   "cpus": os.cpu_count(), **meta}, f, indent=1)
    return path
