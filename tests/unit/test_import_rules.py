"""The import rules of docs/architecture.md, read from the source with ``ast``.

The contract (``edgefleet``'s own modules and ``edgefleet.states``) is a leaf; the agent
and the converters stand on the contract alone; the control plane on the contract and the
converters; nothing in the product loads the demo except on demand, inside a function;
only ``edgefleet.mqtt`` imports paho-mqtt.
A rule counts every import, lazy ones in functions too: a lazy import is still a
dependency, and would pull the control plane's stack into a device that has none of it.
What the long-lived agent process loads at run time (third-party stacks included) is
tests/unit/test_agent_import_boundary.py's job.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
TOP_LEVEL_PACKAGES = ("edgefleet", "edgefleet_demo")

AGENT = "edgefleet.agent"
CONTROL_PLANE = "edgefleet.control_plane"
CONVERTERS = "edgefleet.converters"
DEMO = "edgefleet_demo"

# Where a module lives -> what it must never import. The contract is every edgefleet
# module outside the three parts.
FORBIDDEN = {
    "contract": (AGENT, CONTROL_PLANE, CONVERTERS, DEMO),
    AGENT: (CONTROL_PLANE, CONVERTERS, DEMO),
    CONVERTERS: (AGENT, CONTROL_PLANE, DEMO),
    CONTROL_PLANE: (AGENT,),
}
MQTT_OWNER = "edgefleet.mqtt"
"""The one module that imports paho-mqtt; everything else goes through its ``MqttLink``."""


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part_of(module: str) -> str:
    for part in (AGENT, CONTROL_PLANE, CONVERTERS):
        if module == part or module.startswith(part + "."):
            return part
    return "contract" if module.split(".")[0] == "edgefleet" else DEMO


def _absolute(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, with relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if not is_package:
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str, is_package: bool) -> None:
        self.importer = importer
        self.is_package = is_package
        self.depth = 0
        self.found: list[Import] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _add(self, target: str, node: ast.stmt) -> None:
        self.found.append(Import(self.importer, target, node.lineno, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = _absolute(self.importer, self.is_package, node)
        self._add(module, node)
        # `from edgefleet import control_plane` imports the subpackage itself.
        for alias in node.names:
            self._add(f"{module}.{alias.name}", node)


def imports_in(path: Path) -> list[Import]:
    collector = _Collector(_module_name(path), path.name == "__init__.py")
    collector.visit(ast.parse(path.read_text(), filename=str(path)))
    return collector.found


def all_imports() -> Iterator[Import]:
    for package in TOP_LEVEL_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield from imports_in(path)


def _within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def broken_rules(imports: list[Import]) -> list[str]:
    """One line per import statement that breaks a rule: module, line, what it reached."""
    broken = set()
    for imp in imports:
        part = _part_of(imp.importer)
        for forbidden in FORBIDDEN.get(part, ()):
            if _within(imp.target, forbidden) and not _within(imp.importer, forbidden):
                broken.add(f"{imp.importer}:{imp.line} imports {forbidden} ({part} may not)")
        # The control plane's `edgefleet demo` command alone may load the demo, on demand.
        if part == CONTROL_PLANE and _within(imp.target, DEMO) and not imp.in_function:
            broken.add(f"{imp.importer}:{imp.line} imports {DEMO} outside a function")
        if _within(imp.target, "paho") and imp.importer != MQTT_OWNER:
            broken.add(f"{imp.importer}:{imp.line} imports paho (only {MQTT_OWNER} may)")
    return sorted(broken)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return list(all_imports())


def test_every_part_imports_only_what_the_architecture_allows(imports: list[Import]) -> None:
    broken = broken_rules(imports)
    assert not broken, "\n".join(broken)


def test_the_rules_see_every_package_and_its_imports(imports: list[Import]) -> None:
    importers = {_part_of(i.importer) for i in imports}
    assert importers == {"contract", AGENT, CONTROL_PLANE, CONVERTERS, DEMO}
    # The allowed edges exist, so the rules are not passing because nothing was read.
    assert any(
        _part_of(i.importer) == CONTROL_PLANE and _within(i.target, CONVERTERS) for i in imports
    )
    assert any(
        _part_of(i.importer) == CONTROL_PLANE and i.in_function and _within(i.target, DEMO)
        for i in imports
    )


@pytest.mark.parametrize(
    ("importer", "source", "broken"),
    [
        ("edgefleet.topics", "from edgefleet.agent import daemon", True),
        ("edgefleet.states.install", "from edgefleet.control_plane.core import tables", True),
        ("edgefleet.agent.daemon", "import edgefleet.converters.gate", True),
        ("edgefleet.agent.install.updater", "from ...control_plane import app", True),
        ("edgefleet.agent.cli", "from edgefleet import control_plane", True),
        ("edgefleet.agent.cli", "def f():\n    import edgefleet_demo.spine", True),
        ("edgefleet.converters.gate", "from edgefleet.agent.inference import runtime", True),
        ("edgefleet.control_plane.app", "from edgefleet.agent.config import AgentConfig", True),
        ("edgefleet.control_plane.cli.main", "from edgefleet_demo.spine import Demo", True),
        ("edgefleet.control_plane.cli.main", "def demo():\n    import edgefleet_demo", False),
        ("edgefleet.control_plane.app", "from edgefleet.converters import pipeline", False),
        ("edgefleet.agent.daemon", "from ..messages import InstallOffer", False),
        ("edgefleet.agent.install.updater", "from .journal import Journal", False),
        ("edgefleet.control_plane.broker.link", "import paho.mqtt.client as paho", True),
        ("edgefleet.mqtt", "from paho.mqtt.properties import Properties", False),
    ],
)
def test_a_broken_rule_is_named(importer: str, source: str, broken: bool) -> None:
    collector = _Collector(importer, is_package=False)
    collector.visit(ast.parse(source))
    found = broken_rules(collector.found)
    assert bool(found) is broken, found
    if broken:
        assert found[0].startswith(importer)
