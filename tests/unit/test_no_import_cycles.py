"""No import cycle among the modules of dataplane, the glasswing CLI (cli/) and lab.

The graph is read from the source with ast, imports inside functions included: a cycle
hidden behind a lazy import is still two modules that each need the other. `from P import
name` counts as an import of P.name when that is a module, else of P. Importing a module
also imports its packages (their __init__), except the packages the importer itself is in
(Python has them initialised by then).
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = {"dataplane": "dataplane", "glasswing": "cli", "lab": "lab"}  # import name -> folder


def modules() -> dict:
    """{dotted name: path} of every module in PACKAGES (generated *_pb2 included)."""
    out = {}
    for name, folder in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, base)
            pkg = name if rel == "." else name + "." + rel.replace(os.sep, ".")
            for f in filenames:
                if f.endswith(".py"):
                    mod = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                    out[mod] = os.path.join(dirpath, f)
    return out


def _ancestors(mod: str) -> list:
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def graph() -> dict:
    """{module: set of the product modules it imports}."""
    mods = modules()
    out = {}
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_pkg = path.endswith("__init__.py")
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importer's package
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{node.module}" if node.module else pkg
                else:
                    base = node.module
                for a in node.names:
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
        deps = set()
        own = set(_ancestors(mod))
        for t in targets:
            deps.update(m for m in _ancestors(t) + [t] if m in mods and m not in own)
        deps.discard(mod)
        out[mod] = deps
    return out


def cycles(g: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_sees_the_product_modules():
    g = graph()
    assert "dataplane.node.forwarder" in g and "glasswing.main" in g
    assert "dataplane.kernel.maps" in g["dataplane.kernel.map_sync"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []
