"""The package layers import downwards only: a cycle hidden inside a function is still a cycle.

- ``smfexp.eval`` is scoring machinery and knows no benchmark: nothing under it imports
  ``smfexp.tasks`` (the callers check probe names with ``smfexp.tasks.check_probes``);
- ``smfexp.training`` (the Lightning module basics) sits below the retrofit and the methods:
  it imports neither, and ``smfexp.stages`` imports no ``smfexp.methods`` module.
"""

from __future__ import annotations

import ast
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


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """``file: module`` for each import of a ``forbidden`` module under ``package``."""
    root = SRC / package
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]
    return [
        f"{path.relative_to(SRC)}: {name}"
        for path in files
        for name in sorted(imported_modules(path))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("eval", ("smfexp.tasks",)),
        ("training", ("smfexp.stages", "smfexp.methods")),
        ("stages", ("smfexp.methods",)),
    ],
)
def test_layers_import_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    assert (SRC / package).is_dir()
    assert offenders(package, forbidden) == []


def test_the_layers_import_on_their_own() -> None:
    import smfexp.eval
    import smfexp.stages.retrofit

    assert smfexp.eval.EvalConfig is not None and smfexp.stages.retrofit.RetrofitModule
