"""The package layers import downwards only: a cycle hidden inside a function is still a cycle.

- ``smfexp.utils`` is the floor: it imports nothing of smfexp but itself; ``smfexp.errors``
  (the error types every layer raises) imports only ``smfexp.utils``;
- ``smfexp.data`` (which rows a run trains on) imports no task, callback, method, stage or
  the runner: the rows the probes share with it live in ``smfexp.data.benchmarks``;
- ``smfexp.models`` (loading a model) imports no stage, data or task: the cache it converts
  into is ``smfexp.utils.cache``;
- ``smfexp.eval`` is scoring machinery and knows no benchmark: nothing under it imports
  ``smfexp.tasks`` (the callers check probe names with ``smfexp.tasks.check_probes``);
- ``smfexp.training`` (the Lightning module basics) sits below the retrofit and the methods:
  it imports neither, and ``smfexp.stages`` imports no ``smfexp.methods`` module;
- no two smfexp modules import each other, directly or through others (an edge goes to the
  module named: ``from smfexp.tasks import wikitext`` is an edge to ``smfexp.tasks.wikitext``,
  ``from smfexp.eval import EvalConfig`` one to the package ``smfexp.eval``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "smfexp"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions too), absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def imports_where(package: str, keep: Callable[[str], bool]) -> list[str]:
    """``file: module`` for each import under ``package`` that ``keep`` selects."""
    root = SRC / package
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    return [f"{path.relative_to(SRC)}: {name}" for path in files
            for name in sorted(imported_modules(path)) if keep(name)]


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """``file: module`` for each import of a ``forbidden`` module under ``package``."""
    return imports_where(package, lambda name: _within(name, forbidden))


def smfexp_imports_outside(package: str, allowed: tuple[str, ...]) -> list[str]:
    """``file: module`` for each smfexp module ``package`` imports that is not ``allowed``."""
    return imports_where(package, lambda name: _within(name, ("smfexp",))
                         and not _within(name, allowed))


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("data", ("smfexp.tasks", "smfexp.callbacks", "smfexp.methods", "smfexp.stages",
                  "smfexp.runner")),
        ("models", ("smfexp.stages", "smfexp.data", "smfexp.tasks")),
        ("eval", ("smfexp.tasks",)),
        ("training", ("smfexp.stages", "smfexp.methods")),
        ("stages", ("smfexp.methods",)),
    ],
)
def test_layers_import_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    assert (SRC / package).is_dir()
    assert offenders(package, forbidden) == []


@pytest.mark.parametrize(("package", "allowed"), [
    ("utils", ("smfexp.utils",)),
    ("errors", ("smfexp.utils",)),
])
def test_the_floor_imports_only_utilities(package: str, allowed: tuple[str, ...]) -> None:
    assert (SRC / package).is_dir() or (SRC / f"{package}.py").is_file()
    assert smfexp_imports_outside(package, allowed) == []


def module_name(path: Path) -> str:
    """``smfexp/eval/qa.py`` -> ``smfexp.eval.qa``; a package's ``__init__`` -> the package."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each smfexp module -> the smfexp modules it imports, at any depth (see the top)."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against the importing package
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:  # a submodule, else a name of the module
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in files else base)
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "smfexp.eval.qa" in graph and "smfexp.tasks" in graph["smfexp.callbacks.stream"]
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_layers_import_on_their_own() -> None:
    import smfexp.eval
    import smfexp.stages.retrofit

    assert smfexp.eval.EvalConfig is not None and smfexp.stages.retrofit.RetrofitModule
