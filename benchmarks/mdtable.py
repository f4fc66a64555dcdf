"""Markdown tables and number cells for the benchmark results files (``suite.py`` ->
BENCHMARKS.md, ``gpu_check.py`` -> BENCHMARKS_GPU.md): one writer, so both align and format
alike. Plain Python: the GPU check imports it before its dependencies are installed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GiB = 2**30


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None
          ) -> list[str]:
    """A Markdown table and a blank line. ``align`` like ``---|---:|``; by default the first
    column is left-aligned and the others (numbers) right-aligned."""
    align = align or ("---|" + "---:|" * (len(head) - 1))
    out = ["| " + " | ".join(head) + " |", "|" + align.strip("|") + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def fnum(x: float | None, digits: int = 4) -> str:
    """A number to ``digits`` significant digits (seconds, ratios); n/a when not measured."""
    return "n/a" if x is None else f"{x:.{digits}g}"


def fgib(x: float | None) -> str:
    """Bytes as GiB, two decimals."""
    return "n/a" if x is None else f"{x / GiB:.2f}"
