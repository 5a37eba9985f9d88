"""`glasswing up` refuses clearly, in one line, when it cannot work: not
root, no bcc, no bpffs."""
import builtins
import io

import pytest

from dataplane.kernel import programs as bpf_programs
from dataplane.errors import GlasswingError


def test_not_root(monkeypatch):
    monkeypatch.setattr(bpf_programs.os, "geteuid", lambda: 1000)
    with pytest.raises(GlasswingError, match=r"^must run as root"):
        bpf_programs.check_bpf_available()


def test_no_bcc(monkeypatch):
    import importlib.util
    monkeypatch.setattr(bpf_programs.os, "geteuid", lambda: 0)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bcc" else real(name, *a))
    with pytest.raises(GlasswingError, match=r"^bcc Python module not found: install python3-bpfcc"):
        bpf_programs.check_bpf_available()


def test_no_bpffs(monkeypatch):
    monkeypatch.setattr(bpf_programs.os, "geteuid", lambda: 0)
    real_open = builtins.open

    def fake_open(path, *a, **kw):
        if path == "/proc/self/mounts":
            return io.StringIO("cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
        return real_open(path, *a, **kw)
    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(GlasswingError, match=r"^bpffs is not mounted at /sys/fs/bpf"):
        bpf_programs.check_bpf_available()


def test_error_is_one_line():
    assert str(GlasswingError("a\n  b\tc")) == "a b c"
