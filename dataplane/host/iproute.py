"""The `ip` command, run with errors turned into one line. Control path only."""
import subprocess

from dataplane.errors import GlasswingError


def ip(*args, netns: str = None, check: bool = True) -> str:
    cmd = ["ip"]
    if netns:
        cmd += ["-n", netns]
    cmd += [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and check:
        detail = (r.stderr.strip().splitlines() or ["failed"])[-1]
        raise GlasswingError(f"`{' '.join(cmd)}`: {detail}")
    return r.stdout


def sysctl(key: str, value: str, netns: str = None) -> None:
    """Set a per-namespace sysctl. /proc/sys/net is per namespace of the writer."""
    cmd = ["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"] if netns \
        else ["sysctl", "-qw", f"{key}={value}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise GlasswingError(f"sysctl {key}={value} failed: {r.stderr.strip()}")
