"""The suite's own layout: shared helpers live in tests/support, so no test module imports
from another test module or from a conftest (a helper moved or renamed in one test file
must not break another tier), and conftest.py files hold hooks and fixtures only."""
import ast
import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules():
    for root, _dirs, files in os.walk(TESTS):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                yield os.path.relpath(path, TESTS), ast.parse(open(path).read(), path)


def imported(tree):
    """(module, level) of every import in tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is None:  # from . import test_x
            for alias in node.names:
                yield alias.name, node.level
        elif isinstance(node, ast.ImportFrom):
            yield node.module, node.level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0


def is_test_module(name: str, level: int) -> bool:
    last = name.rsplit(".", 1)[-1]
    if level:  # relative: a sibling test module or conftest
        return last.startswith("test_") or last == "conftest"
    return name.startswith("tests.") and not name.startswith("tests.support") or name == "tests"


def test_no_test_module_imports_another_or_a_conftest():
    bad = [(path, name or ".", level) for path, tree in modules()
           for name, level in imported(tree) if is_test_module(name, level)]
    assert bad == [], "import shared helpers from tests.support instead"


def test_conftest_files_define_only_hooks_and_fixtures():
    bad = []
    for path, tree in modules():
        if os.path.basename(path) != "conftest.py":
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                marks = [ast.unparse(d) for d in node.decorator_list]
                if not node.name.startswith("pytest_") and not any("fixture" in m for m in marks):
                    bad.append(f"{path}: {node.name}")
            elif isinstance(node, ast.ClassDef):
                bad.append(f"{path}: class {node.name}")
    assert bad == [], "helpers belong in tests/support"
