"""docs/ARCHITECTURE.md stays true: every package of the tree is in its table of concerns,
every path it names exists, and every file a row names is in that row's package."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "ARCHITECTURE.md")
PATH = re.compile(r"`([A-Za-z_][\w./-]*/[\w./-]*)`")     # `dataplane/x/y.py`, `bpf/`
FILE = re.compile(r"`([\w-]+\.(?:py|c|h|pyx|proto))`")  # `programs.py` in a package's row


def _doc():
    with open(DOC) as f:
        return f.read()


def _packages():
    found = []
    for top in ("dataplane", "lab"):
        for d, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [x for x in dirs if not x.startswith((".", "__"))]
            if "__init__.py" in files:
                found.append(os.path.relpath(d, ROOT) + "/")
    return sorted(found)


def _concern_rows():
    """{package path: row text} of the table under 'Where each concern lives'."""
    section = _doc().split("## Where each concern lives", 1)[1]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `([^`]+/)`[^|]*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_package_has_a_row():
    rows = _concern_rows()
    assert _packages(), "no packages found: is ROOT right?"
    missing = [p for p in _packages() if p not in rows]
    assert not missing, f"packages missing from docs/ARCHITECTURE.md's table of concerns: {missing}"


def test_every_named_path_exists():
    gone = [p for p in set(PATH.findall(_doc()))
            if not p.startswith("/") and not os.path.exists(os.path.join(ROOT, p.split(" ")[0]))]
    assert not gone, f"docs/ARCHITECTURE.md names paths that do not exist: {sorted(gone)}"


def test_files_named_in_a_row_live_in_its_package():
    wrong = []
    for pkg, text in _concern_rows().items():
        for name in FILE.findall(text):
            if not os.path.exists(os.path.join(ROOT, pkg, name)):
                wrong.append(pkg + name)
    assert not wrong, f"docs/ARCHITECTURE.md's table names files not in their row's package: {wrong}"
