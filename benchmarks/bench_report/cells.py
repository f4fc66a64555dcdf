"""The suite's table cells beyond plain numbers (``mdtable``): ratios, yes/no and met/not met
against a target, milliseconds, and what a configuration without timings shows."""

from __future__ import annotations

from typing import Any


def fx(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}x"


def ok(value: float | None, good: bool) -> str:
    return "n/a" if value is None else ("yes" if good else "**no**")


def met(value: float | None, good: bool) -> str:
    """A target's status cell (issue 24 wording)."""
    return "n/a" if value is None else ("met" if good else "**not met**")


def ms(x: float | None) -> str:
    """Seconds as milliseconds (4 significant digits)."""
    return "n/a" if x is None else f"{x * 1e3:.4g}"


def status(r: dict[str, Any] | None) -> str | None:
    """A cell text for a config that has no timings."""
    if r is None:
        return "not run"
    if "error" in r:
        return "failed"
    if "skipped" in r:
        return "skipped"
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b
