"""The import graph of ``services/`` has no cycle, between packages nor between modules.

Why it matters: a cycle between deployments (embedded <-> Kafka) or from an adapter back into the
core makes every layer depend on every other, so none can change or be read alone. Imports are
read with ``ast`` from the source, including those inside functions (a lazy import is still a
dependency) but not those under ``if TYPE_CHECKING:`` (they never run). ``from package import
module`` depends on that module, not on the whole package. Imports inside ``services/`` are relative
(the package installs as ``hvdm``, runs as ``services`` from a checkout); they are resolved against
the importing module's package, and an absolute ``services`` import there is itself a failure.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SERVICES.rglob("*.py"):
        parts = list(path.relative_to(SERVICES.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node, except the bodies of ``if TYPE_CHECKING:`` (annotations only, never run)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            for other in child.orelse:
                yield from _nodes(other)
            continue
        yield from _nodes(child)


def _absolute(node: ast.ImportFrom, importer: str, path: Path) -> str:
    """The module a ``from ... import`` names, with relative levels resolved against the importer's package."""
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(path: Path, modules: Mapping[str, Path], importer: str = "") -> Iterator[str]:
    for node in _nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            source = _absolute(node, importer, path)
            subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
            yield from subs
            if len(subs) < len(node.names) and source in modules:
                yield source


def import_graph(package_level: bool) -> dict[str, set[str]]:
    modules = _modules()

    def key(name: str) -> str:
        return ".".join(name.split(".")[:2]) if package_level else name

    graph: dict[str, set[str]] = {key(m): set() for m in modules}
    for name, path in modules.items():
        for target in _imports(path, modules, name):
            if key(target) != key(name):
                graph[key(name)].add(key(target))
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as a path that starts and ends on the same node, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_relative_imports_resolve_to_the_modules_they_name() -> None:
    modules = _modules()
    assert "services.dm_engine.events" in set(
        _imports(modules["services.dm_engine.step"], modules, "services.dm_engine.step")
    )
    assert "services.dm_protocol" in set(
        _imports(modules["services.dm_engine.step"], modules, "services.dm_engine.step")
    )


def test_services_imports_itself_only_relatively() -> None:
    """An absolute ``services...`` import would break the installed package (it is ``hvdm`` there)."""
    absolute = []
    for name, path in _modules().items():
        for node in _nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                absolute += [f"{name}: import {a.name}" for a in node.names if a.name.split(".")[0] == "services"]
            elif (
                isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "services"
            ):
                absolute.append(f"{name}: from {node.module} import ...")
    assert absolute == []


def test_the_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_cycle_between_packages() -> None:
    graph = import_graph(package_level=True)
    assert "services.embedded" in graph and "services.kafka_engine" in graph
    assert find_cycle(graph) is None


def test_no_cycle_between_modules() -> None:
    assert find_cycle(import_graph(package_level=False)) is None


def test_the_core_imports_no_adapter() -> None:
    """dm_protocol, range_store, vdimm_allocator and dm_engine do no I/O: they import only each other
    (and ``services.units``, the constants every package counts in)."""
    core = {
        "services.dm_protocol",
        "services.range_store",
        "services.vdimm_allocator",
        "services.dm_engine",
        "services.units",
    }
    graph = import_graph(package_level=True)
    assert {pkg: graph[pkg] - core for pkg in core} == {pkg: set() for pkg in core}


#: Constants with one home each; a second definition would let the two drift apart.
ONE_HOME = {
    "PAGE_SIZE": "services.units",
    "PAGE_SHIFT": "services.units",
    "MIB": "services.units",
    "ALL_VMS": "services.dm_engine.inputs",
}


def test_shared_constants_are_defined_once() -> None:
    found: dict[str, list[str]] = {name: [] for name in ONE_HOME}
    for module, path in _modules().items():
        for node in ast.parse(path.read_text(), str(path)).body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Name) and target.id in found:
                    found[target.id].append(module)
    assert found == {name: [home] for name, home in ONE_HOME.items()}
