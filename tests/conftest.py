"""Shared test plumbing.

Tiers: unit/ (no root), bpf/ (root + bcc), integration/ (real namespaces,
processes and peers). With GLASSWING_REQUIRE_ALL=1 (CI), a skipped test is a
failure: a tier that silently skips proves nothing.
"""
import os
import shutil

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("GLASSWING_REQUIRE_ALL") == "1" and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"skipped, but GLASSWING_REQUIRE_ALL=1 forbids skips: {reason}"


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
