"""Preconditions: skip (or, with GLASSWING_REQUIRE_ALL=1 as in CI, fail) when a test cannot run
here, and pick a built twin of a module that has C/Cython and Python twins."""
import os
import shutil

import pytest

# CI sets GLASSWING_REQUIRE_ALL=1: a skipped test is then a failure (tests/conftest.py).
REQUIRE_ALL = os.environ.get("GLASSWING_REQUIRE_ALL") == "1"


def need_root_and_bpf():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        import bcc  # noqa: F401 - importable is the check
    except ImportError:
        pytest.skip("needs bcc (python3-bpfcc)")
    if not os.path.ismount("/sys/fs/bpf"):
        pytest.skip("needs bpffs at /sys/fs/bpf")


def need_tools(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def twin(twins: dict, name: str, what: str):
    """twins[name], or skip (fail under REQUIRE_ALL) naming what is not built."""
    if name not in twins:
        msg = f"{what} twin {name!r} not available (build: setup.py build_ext --inplace)"
        if REQUIRE_ALL:
            pytest.fail(msg)
        pytest.skip(msg)
    return twins[name]
