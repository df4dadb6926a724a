"""The package's import graph has no cycle.

Every `import` of a package module counts, at module top or inside a function: a cycle through a
function-level import is still a loop in the design (module A needs B needs A), only hidden until
run time. The graph is read from the source with `ast`, so the test imports nothing heavy.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ltxv2_diffusers"
ROOT = Path(__file__).resolve().parents[1]


def package_modules() -> dict[str, tuple[Path, bool]]:
    """`dotted name -> (file, is_package)` for every module of the package."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """`module -> {imported package module: first line}` over every import statement."""
    modules = package_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in modules.items():
        base = name if is_package else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                parts = base.split(".")[: len(base.split(".")) - max(node.level - 1, 0)] if node.level else []
                source = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{source}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                resolved = resolve(target) if target.startswith(PACKAGE) else None
                if resolved and resolved != name and not name.startswith(resolved + "."):
                    edges.setdefault(resolved, node.lineno)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as a path `[a, b, ..., a]`, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, {}):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def test_graph_sees_the_package():
    graph = import_graph()
    assert "ltxv2_diffusers.training.trainer" in graph
    # function-level imports count too (these two are inside functions)
    assert "ltxv2_diffusers.data.prompts" in graph["ltxv2_diffusers.cli.cache_text"]
    assert "ltxv2_diffusers.models.loading" in graph["ltxv2_diffusers.text.gemma"]


def test_find_cycle_reports_a_loop():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_package_import_graph_has_no_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} -> {b} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("import cycle:\n  " + "\n  ".join(steps))


def test_test_files_share_helpers_through_conftest_only():
    """A test file importing another runs that file's module code and ties the two together."""
    tests = Path(__file__).resolve().parent
    names = {p.stem for p in tests.glob("test_*.py")}
    offenders = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level else []
            offenders += [f"{path.name} imports {m}" for m in modules if m in names]
    assert not offenders, "move shared helpers to tests/conftest.py: " + "; ".join(offenders)
