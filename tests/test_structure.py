"""The package's shape: no import cycles, and no module importing from a package above it in the pipeline.

The layers, lowest first (docs/architecture.md draws them). A module may import from a lower layer, and from
its own package; two packages on one layer stay independent of each other. Every import counts, those inside
functions included; the registry's "module:attribute" strings are not imports (that is what they are for).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "smalltune"

LAYERS: list[set[str]] = [
    {"errors"},
    {"io", "registry"},
    {"config"},
    {"runs", "data"},
    {"tasks"},
    {"formatting", "models", "gguf_writer"},
    {"inference"},
    {"training"},
    {"evaluation", "serving", "labelling"},
    {"recipes"},
    {"cli"},
]
FACADE = "smalltune"  # the package's __init__: re-exports, lazily, from every layer


def unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: smalltune.tasks.extract -> tasks."""
    return module.split(".")[1] if "." in module else module


def layer_of(module: str) -> int:
    name = unit(module)
    for rank, names in enumerate(LAYERS):
        if name in names:
            return rank
    raise AssertionError(f"{module}: its package {name!r} has no layer; add it to LAYERS and docs/architecture.md")


def module_name(path: Path, root: Path) -> str:
    parts = ["smalltune", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each smalltune module -> the smalltune modules it imports (anywhere in its body)."""
    modules = {module_name(path, root): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            imported |= {t for t in targets if t in modules and t != name}
        graph[name] = imported
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each import from a higher layer, or from another package on the same layer."""
    wrong = []
    for source, targets in graph.items():
        if source == FACADE:
            continue
        for target in sorted(targets):
            if target == FACADE:
                wrong.append(f"{source} -> {target} (import from the module itself, not the package facade)")
            elif layer_of(target) > layer_of(source) or (
                    layer_of(target) == layer_of(source) and unit(target) != unit(source)):
                wrong.append(f"{source} -> {target}")
    return wrong


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_no_module_imports_from_a_package_above_it():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_every_package_is_drawn_in_the_architecture_doc():
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawn = {unit(module) for module in import_graph(PACKAGE) if module != FACADE}
    assert {name for name in drawn if f"`{name}" not in doc} == set()


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    root = tmp_path / "smalltune"
    (root / "tasks").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "tasks" / "__init__.py").write_text("")
    (root / "config.py").write_text("def f():\n    from smalltune.tasks.kind import X\n")  # lazy, still counted
    (root / "tasks" / "kind.py").write_text("from smalltune.config import f\nX = 1\n")
    (root / "cli.py").write_text("import smalltune.config\n")
    graph = import_graph(root)
    assert cycles(graph) == [["smalltune.config", "smalltune.tasks.kind"]]
    assert upward_imports(graph) == ["smalltune.config -> smalltune.tasks.kind"]
