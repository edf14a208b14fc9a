"""Every module of edgefleet imports, and the agent's modules import no cycle.

The import graph is read from the source (``ast``), counting imports inside
functions too: an import deferred into a function to dodge a cycle is still one.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import edgefleet

ROOT = Path(edgefleet.__file__).parent
CHECKED = ("edgefleet.agent", "edgefleet.states")
OTHER_ENVIRONMENTS = {"edgefleet.converters.tflite_worker", "edgefleet.converters.onnx2tf_worker"}
"""Scripts run by another interpreter (tflite_runtime's, onnx2tf's), not importable here."""
RUN_BY_ALEMBIC = "edgefleet.control_plane.core.migrations."
"""Migration scripts: Alembic loads them with its ``context`` set up, never an import."""


def module_files() -> dict[str, Path]:
    """Every module of the edgefleet package by dotted name."""
    modules: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The edgefleet modules ``path`` imports (``from pkg import mod`` names the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path of names (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_imports() -> None:
    for info in pkgutil.walk_packages(edgefleet.__path__, "edgefleet."):
        if (
            info.name.rpartition(".")[2] == "__main__"
            or info.name in OTHER_ENVIRONMENTS
            or info.name.startswith(RUN_BY_ALEMBIC)
        ):
            continue
        importlib.import_module(info.name)


def test_the_agent_modules_import_no_cycle() -> None:
    files = module_files()
    checked = {n: p for n, p in files.items() if n.startswith(CHECKED)}
    graph = {name: imports_of(name, path, set(checked)) for name, path in checked.items()}
    # A package's __init__ is run by importing any of its modules: not an edge of a cycle.
    packages = {n for n, p in checked.items() if p.name == "__init__.py"}
    graph = {n: deps - packages for n, deps in graph.items() if n not in packages}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
