"""The import graph of our five packages: no cycles between modules, and the layering of
DESIGN.md (who may import whom).

The graph is read from the source with ``ast``, not by importing anything, so it sees every
import: at module level, inside functions, and under ``if TYPE_CHECKING:``. Relative imports are
resolved to module names; ``from package import name`` counts as an import of the submodule
``package.name`` when there is one, else of ``package`` itself (its ``__init__``). Importing
``a.b`` is an edge to ``a.b`` only: Python runs ``a/__init__.py`` first, but counting that would
make every package that re-exports its submodules a cycle of its own.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocols", "edge_agent", "cloud_hub", "converters", "quantum")

MODULE_LEVEL_MAY_IMPORT = {
    "protocols": {"protocols"},
    "edge_agent": {"edge_agent", "protocols"},
    "cloud_hub": {"cloud_hub", "protocols"},
    "converters": {"converters", "protocols"},
    "quantum": {"quantum", "protocols"},
}
"""DESIGN.md: what each package may import when its modules are imported."""

ANYWHERE_MAY_IMPORT = {
    "protocols": {"protocols"},
    "edge_agent": {"edge_agent", "protocols"},
    "cloud_hub": {"cloud_hub", "protocols", "converters", "quantum"},
    "converters": set(PACKAGES) - {"edge_agent", "cloud_hub"},
    "quantum": set(PACKAGES) - {"edge_agent", "cloud_hub"},
}
"""...and inside functions: the hub imports the converter and the quantum classifier only where
those features are used; nothing imports the agent or the hub."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at module level"
        return f"{self.importer}:{self.line} imports {self.imported} ({where})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Module name -> source file, for every ``.py`` file of the five packages."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def _resolve_base(module: str, node: ast.ImportFrom) -> str:
    """The module a ``from X import ...`` names, relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    package = parts if _is_package(module) else parts[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _ours(name: str) -> str | None:
    """The module of ours ``name`` is, or lies in (its nearest existing prefix); ``None`` for
    anything else (the standard library, third parties)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules():
            return candidate
        parts.pop()
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, name: str, line: int) -> None:
        target = _ours(name)
        if target is not None and target != self.module:
            self.found.append(
                Import(importer=self.module, imported=target, line=line, in_function=self.depth > 0)
            )

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve_base(self.module, node)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in modules() else base, node.lineno)


@cache
def imports() -> tuple[Import, ...]:
    """Every import of one of our modules by another, once per line."""
    found: dict[Import, None] = {}
    for module, path in modules().items():
        visitor = _Visitor(module)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.update(dict.fromkeys(visitor.found))
    return tuple(found)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in modules()}
    for item in imports():
        graph[item.importer].add(item.imported)
    return graph


def _components(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    yield sorted(component)


def _cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module, as a path that ends where it starts."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no cycle in {component}")


def _describe(cycle: list[str]) -> str:
    lines = [" -> ".join(cycle)]
    for importer, imported in itertools.pairwise(cycle):
        where = [i for i in imports() if (i.importer, i.imported) == (importer, imported)]
        lines.extend(f"    {item}" for item in where)
    return "\n".join(lines)


def cycles() -> list[list[str]]:
    graph = _graph()
    return [_cycle(graph, component) for component in _components(graph)]


def _package(module: str) -> str:
    return module.split(".")[0]


def _walk(module: str, source: str) -> set[tuple[str, bool]]:
    visitor = _Visitor(module)
    visitor.visit(ast.parse(source))
    return {(item.imported, item.in_function) for item in visitor.found}


def test_the_walker_resolves_every_kind_of_import() -> None:
    source = (
        "import numpy\n"
        "import protocols.codec\n"
        "from . import router\n"
        "from .cloud import gateway\n"
        "from .cloud.calls import CloudCall\n"
        "from .errors import AgentError\n"
        "def later():\n"
        "    from protocols import classify\n"
    )
    assert _walk("edge_agent.agent", source) == {
        ("protocols.codec", False),
        ("edge_agent.router", False),
        ("edge_agent.cloud.gateway", False),
        ("edge_agent.cloud.calls", False),
        ("edge_agent.errors", False),
        ("protocols", True),
    }
    # In a package's __init__, ``.`` is the package itself.
    assert _walk("edge_agent.cloud", "from .calls import X\nfrom .. import errors\n") == {
        ("edge_agent.cloud.calls", False),
        ("edge_agent.errors", False),
    }
    assert ("edge_agent.agent", "edge_agent.router", False) in {
        (i.importer, i.imported, i.in_function) for i in imports()
    }


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"a", "f"}, "f": {"e"}}
    found = [_cycle(graph, component) for component in _components(graph)]
    assert sorted(found) == [["a", "b", "c", "a"], ["e", "f", "e"]]


def test_no_import_cycles_between_our_modules() -> None:
    """Prints each cycle with the lines that make it."""
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(_describe(cycle) for cycle in found)


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_the_design_allows(package: str) -> None:
    wrong = [
        str(item)
        for item in imports()
        if _package(item.importer) == package
        and _package(item.imported)
        not in (ANYWHERE_MAY_IMPORT if item.in_function else MODULE_LEVEL_MAY_IMPORT)[package]
    ]
    assert not wrong, f"{package} imports what DESIGN.md does not allow:\n" + "\n".join(wrong)
