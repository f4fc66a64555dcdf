"""Scores of the model before training: computed once per (model, stage, eval config, target)
and reused by every job of a sweep. The rows a probe selects on that model (``retention``:
what it already knows) are cached the same way, so every job scores the same rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smfexp.eval.paired import ProbeItems, items_from_json, items_to_json
from smfexp.utils.cache import load_or_build
from smfexp.utils.io import atomic_write_json

Scores = dict[str, dict[str, float]]
SCORES = "scores.json"
ITEMS = "items.json"


@dataclass
class Scored:
    """One scoring pass: metrics per probe and the per-item totals behind them."""

    scores: Scores
    items: ProbeItems = field(default_factory=dict)
ROWS = "rows.json"


def _valid(scores: Any) -> Scores:
    """The scores if every value is a number, else ``ValueError`` (then the entry is rebuilt)."""
    if not isinstance(scores, dict) or not all(
        isinstance(m, dict)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in m.values())
        for m in scores.values()
    ):
        raise ValueError("malformed scores")
    return scores


def cached_scores(key: dict[str, Any], score: Callable[[], Scores]) -> Scores:
    """``score()``'s result for ``key``, from the cache when an intact entry exists."""
    return cached_scored(key, lambda: Scored(score(), {})).scores


def cached_scored(key: dict[str, Any], score: Callable[[], Scored]) -> Scored:
    """``score()``'s scores and per-item totals for ``key`` (the items are what a paired
    interval against these starting scores resamples), from the cache when intact."""

    def build(directory: Path) -> None:
        scored = score()
        atomic_write_json(directory / ITEMS, items_to_json(scored.items))
        atomic_write_json(directory / SCORES, scored.scores)

    def load(directory: Path) -> Scored:
        scores = _valid(json.loads((directory / SCORES).read_text(encoding="utf-8")))
        items = directory / ITEMS
        loaded = items_from_json(json.loads(items.read_text(encoding="utf-8"))) \
            if items.is_file() else {}
        return Scored(scores, loaded)

    scored, _ = load_or_build("scores", key, build, load)
    return scored


def cached_rows(key: dict[str, Any],
                select: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``select()``'s rows for ``key`` (rows a probe chose on the model before training)."""

    def build(directory: Path) -> None:
        atomic_write_json(directory / ROWS, select())

    def load(directory: Path) -> list[dict[str, Any]]:
        rows = json.loads((directory / ROWS).read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError("malformed rows")
        return rows

    rows, _ = load_or_build("probe_rows", key, build, load)
    return rows
