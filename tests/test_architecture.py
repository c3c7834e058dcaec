"""The package's shape: imports point one way (no cycles, lazy imports included), and no module reaches another
of sqdr's modules by name through ``importlib``."""

from __future__ import annotations

import ast
from pathlib import Path

import sqdr

PACKAGE = Path(sqdr.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every sqdr module ``path`` imports, at the top or inside a function (``from a import b`` counts ``a.b``
    when that is a module, else ``a``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {name for name in found if name in known and name != module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, known) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_module_of_sqdr_is_part_of_an_import_cycle():
    graph = import_graph()
    assert len(graph) > 20 and graph["sqdr.cli"] >= {"sqdr.module", "sqdr.errors"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_module_reaches_sqdr_through_importlib():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                argument = node.args[0] if node.args else None
                assert not (isinstance(argument, ast.Constant) and str(argument.value).startswith("sqdr")), path


def test_the_models_layer_imports_nothing_above_it():
    for name, targets in import_graph().items():
        if name.startswith("sqdr.models"):
            assert all(t.startswith("sqdr.models") or t == "sqdr.errors" for t in targets), (name, targets)
