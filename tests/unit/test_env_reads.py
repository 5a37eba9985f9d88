"""The environment is read in dataplane/settings.py only (its docstring lists every
variable). Found with ast in dataplane, the glasswing CLI (cli/) and lab: any use of
os.environ or os.getenv (or environ/getenv imported from os) elsewhere fails, except
dict(os.environ, ...), the whole environment handed to a child process.
"""
import ast
import re
import os

import pytest

from dataplane import settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDERS = ("dataplane", "cli", "lab")
SETTINGS = os.path.join("dataplane", "settings.py")


def reads(source: str) -> list:
    """Line numbers of environment reads in source (see the module docstring)."""
    tree = ast.parse(source)
    allowed = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict"
                and node.args and isinstance(node.args[0], ast.Attribute) and node.args[0].attr == "environ"):
            allowed.add(id(node.args[0]))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv", "getenvb"):
            if id(node) not in allowed:
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(a.name in ("environ", "environb", "getenv", "getenvb") for a in node.names):
                lines.append(node.lineno)
    return sorted(lines)


def sources():
    for folder in FOLDERS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in filenames:
                if f.endswith(".py"):
                    path = os.path.join(dirpath, f)
                    yield os.path.relpath(path, ROOT), path


def test_reads_are_found():
    assert reads("import os\nx = os.environ.get('A')\n") == [2]
    assert reads("import os\nx = os.getenv('A')\n") == [2]
    assert reads("import os\nif 'A' in os.environ:\n    pass\n") == [2]
    assert reads("from os import environ\n") == [1]
    assert reads("import os\nenv = dict(os.environ, A='1')\n") == []
    assert reads("import os\nenv = os.environ.copy()\n") == [2]


def test_settings_reads_the_environment():
    with open(os.path.join(ROOT, SETTINGS)) as f:
        assert reads(f.read()), "settings.py reads no variable: the scan is broken"


def test_no_module_but_settings_reads_the_environment():
    found = []
    for rel, path in sources():
        if rel == SETTINGS:
            continue
        with open(path) as f:
            found += [f"{rel}:{n}" for n in reads(f.read())]
    assert found == [], "environment read outside dataplane/settings.py"


def test_settings_docstring_lists_every_variable_it_reads():
    with open(os.path.join(ROOT, SETTINGS)) as f:
        text = f.read()
    names = set(re.findall(r'os\.environ\.get\("(GLASSWING_\w+)"', text))
    assert names, "no GLASSWING_ variable read in settings.py"
    for name in names:
        assert f"- {name}:" in settings.__doc__, name


def test_pump_choice(monkeypatch):
    monkeypatch.delenv("GLASSWING_PUMP", raising=False)
    assert settings.pump_choice() == "auto"
    monkeypatch.setenv("GLASSWING_PUMP", " Python ")
    assert settings.pump_choice() == "python"
    monkeypatch.setenv("GLASSWING_PUMP", "fast")
    with pytest.raises(ValueError):
        settings.pump_choice()


def test_relay_mode_and_kernel_override(monkeypatch):
    monkeypatch.delenv("GLASSWING_RELAY", raising=False)
    monkeypatch.setenv("GLASSWING_KERNEL_RELAY", "maybe")
    assert settings.relay_mode() == "" and settings.kernel_relay_override() == ""
    monkeypatch.setenv("GLASSWING_RELAY", " engine ")
    monkeypatch.setenv("GLASSWING_KERNEL_RELAY", "OFF")
    assert settings.relay_mode() == "engine" and settings.kernel_relay_override() == "off"
