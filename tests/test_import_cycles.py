"""The package's imports run one way: no module imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import ruxa_async

ROOT = Path(ruxa_async.__file__).parent


def _name(path: Path) -> str:
    """``ruxa_async.gateway._keys`` for ``.../ruxa_async/gateway/_keys.py`` (a package: its own)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports anywhere (type-checking and function-level too)."""
    here = _name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            else:
                source = node.module or ""
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in modules:
                    found.add(target)  # a submodule: ``from . import _keys``
                elif source in modules:
                    found.add(source)
    found.discard(here)
    return found


def _graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {_name(p) for p in paths}
    return {_name(p): _imports(p, modules) for p in paths}


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """One import loop (as a path back to its start) per back edge a depth-first walk meets."""
    state: dict[str, str] = {}
    found: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                found.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_the_loop_finder_finds_a_loop() -> None:
    """A two-module loop and a three-module loop are both reported, a tree is not."""
    assert loops({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert loops({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_package_has_no_import_cycle() -> None:
    """The imports among ruxa_async's modules, subpackages included, form no loop."""
    graph = _graph()
    assert "ruxa_async._core" in graph["ruxa_async._client"]
    assert "ruxa_async.gateway._admission" in graph["ruxa_async.gateway._gateway"]
    assert "ruxa_async.testing._admin" in graph["ruxa_async.testing._server"]
    assert loops(graph) == []
