"""The gateway package's imports run one way: no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import ruxa_async.gateway

PACKAGE = Path(ruxa_async.gateway.__file__).parent


def _imports(path: Path) -> set[str]:
    """Sibling modules ``path`` imports anywhere (type-checking and function-level too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_the_gateway_package_has_no_import_cycle() -> None:
    """Every module's sibling imports form a graph without a loop (checked by a DFS)."""
    graph = {
        p.stem: _imports(p) & {q.stem for q in PACKAGE.glob("*.py")}
        for p in PACKAGE.glob("*.py")
        if p.stem != "__init__"
    }
    state: dict[str, str] = {}
    loops: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                loops.append([*path[path.index(dep) :], dep] if dep in path else [module, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "_admission" in graph["_gateway"]
    assert loops == []
