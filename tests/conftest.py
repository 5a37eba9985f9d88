"""Shared test plumbing: hooks and fixtures only (helpers live in tests/support).

Tiers: unit/ (no root), bpf/ (root + bcc), integration/ (real namespaces,
processes and peers). With GLASSWING_REQUIRE_ALL=1 (CI), a skipped test is a
failure: a tier that silently skips proves nothing.

Hypothesis runs derandomized (the examples follow from each test's source) and
keeps no example database, so a fresh clone and every later run try the same
examples and nothing is written into the tree; no deadline, as a deadline is a
wall-clock assertion.
"""
import pytest
from hypothesis import settings

from tests.support.need import REQUIRE_ALL

settings.register_profile("glasswing", derandomize=True, database=None, deadline=None)
settings.load_profile("glasswing")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_ALL and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"skipped, but GLASSWING_REQUIRE_ALL=1 forbids skips: {reason}"
