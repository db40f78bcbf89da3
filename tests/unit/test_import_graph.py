"""No import cycles among difflane's modules.

A cycle makes the import order matter and hides behind a lazy import until someone moves it.
Module-level imports may form no cycle at all. Imports inside functions (lazy: optional extras,
heavy libraries, CLI start-up speed) are counted too, so a loop cannot hide behind one; the few
that close a loop on purpose are listed below, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import difflane

PACKAGE = Path(difflane.__file__).parent

# (importer, imported) pairs of function-local imports that may close a loop, and why.
LAZY_LOOPS_ALLOWED: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, name: str, is_package: bool) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it runs at import time (not in a function or TYPE_CHECKING)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, top))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), top)
            else:
                visit(child, top)

    visit(tree, True)
    return found


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = name.split(".") if is_package else name.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    targets = set()
    for target in names:
        while target and target not in modules:  # `import difflane.x.y` of a missing module: its package
            target = target.rpartition(".")[0]
        if target.startswith("difflane") and target != name:
            targets.add(target)
    return targets


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node, top in _imports(ast.parse(path.read_text(), str(path)), name, is_package):
            if module_level_only and not top:
                continue
            for target in _targets(node, name, is_package, modules):
                if top or (name, target) not in LAZY_LOOPS_ALLOWED:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_module_level_imports_form_no_cycle() -> None:
    assert _cycles(_graph(module_level_only=True)) == []


def test_lazy_imports_close_no_loop_either() -> None:
    assert _cycles(_graph(module_level_only=False)) == []


def test_the_checker_sees_a_cycle() -> None:
    graph = {
        "difflane.a": {"difflane.b"},
        "difflane.b": {"difflane.c"},
        "difflane.c": {"difflane.a"},
        "difflane.d": set(),
    }
    assert _cycles(graph) == [["difflane.a", "difflane.b", "difflane.c"]]


def test_the_graph_reads_the_worker_imports() -> None:
    graph = _graph(module_level_only=True)
    assert "difflane.worker.runtime" in graph["difflane.worker.isolation"]
    assert "difflane.errors" in graph["difflane.worker.runtime"]
