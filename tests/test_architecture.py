"""The package's shape: no import cycle inside headattr, and no import against the layer order.

Every import counts, also those inside functions (a lazy import still couples the modules). The layer of a module
is its first subpackage under ``headattr``; a module may import from its own subpackage and from lower layers.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "headattr"
LAYERS = [
    {"headattr", "errors"},
    {"stats", "data", "demo"},
    {"models", "objective"},
    {"engine"},
    {"methods"},
    {"pipeline"},
    {"analysis"},
    {"evaluation"},
    {"report"},
    {"sweeps"},
    {"cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: modules of the same package it imports}, relative and absolute, at any depth of the code."""
    top = package.name
    files = {}
    for f in package.rglob("*.py"):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {m: set() for m in files}
    for mod, f in files.items():
        pkg = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target != top and not target.startswith(top + "."):
                    continue
                while target not in files:
                    target = target.rpartition(".")[0]
                if target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]], rank: dict[str, int]) -> list[str]:
    """Imports from a module to a module of another subpackage whose layer is not lower."""
    bad = []
    for mod, targets in sorted(graph.items()):
        for t in sorted(targets):
            a, b = layer(mod), layer(t)
            if a != b and rank[b] >= rank[a]:
                bad.append(f"{mod} (layer {rank[a]}) imports {t} (layer {rank[b]})")
    return bad


def test_every_subpackage_has_a_layer():
    graph = import_graph(PACKAGE)
    assert {layer(m) for m in graph} <= set(RANK), sorted({layer(m) for m in graph} - set(RANK))


def test_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_imports_follow_the_layer_order():
    assert upward_imports(import_graph(PACKAGE), RANK) == []


def test_each_subpackage_says_what_it_owns_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Layer" in doc and "import" in doc, f"{init.parent.name}/__init__.py: no layer docstring"


@pytest.fixture
def planted(tmp_path):
    """A package with a cycle (a.x -> a.y -> a.x, one of them lazy) and an upward import (low -> high)."""
    root = tmp_path / "pkg"
    for sub in ("a", "low", "high"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text('"""doc"""\n')
    (root / "__init__.py").write_text("")
    (root / "a" / "x.py").write_text("from .y import f\n")
    (root / "a" / "y.py").write_text("def f():\n    from pkg.a import x\n    return x\n")
    (root / "low" / "m.py").write_text("from ..high.n import g\n")
    (root / "high" / "n.py").write_text("import pkg.low\n\ng = 1\n")
    return root


def test_the_checks_find_planted_faults(planted):
    graph = import_graph(planted)
    assert graph["pkg.a.x"] == {"pkg.a.y"} and graph["pkg.a.y"] == {"pkg.a.x"}
    assert cycles(graph) == [["pkg.a.x", "pkg.a.y"]]
    rank = {"pkg": 0, "a": 1, "low": 1, "high": 2}
    assert upward_imports(graph, rank) == ["pkg.low.m (layer 1) imports pkg.high.n (layer 2)"]
    assert upward_imports(graph, {**rank, "low": 2}) == [
        "pkg.high.n (layer 2) imports pkg.low (layer 2)",
        "pkg.low.m (layer 2) imports pkg.high.n (layer 2)",
    ]
