"""A run's per-item scores on disk (``items.json`` beside results.json).

results.json keeps each probe's value and its paired interval against the base. Comparing
two runs on the same items - a lever against the default on the same fact draw - needs the
per-item totals themselves: :func:`smfexp.eval.paired.difference_between_runs` resamples
the items of both runs together, which resolves differences far below either run's own
interval. Stored per scoring point: ``end`` (the run's last scores) and, on nested fact
streams, every N (``"64"``, ``"256"``); each with the ``before`` and ``after`` totals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from smfexp.eval.paired import ProbeItems, items_from_json, items_to_json
from smfexp.utils.io import atomic_write_text

ITEMS_FILE = "items.json"
END = "end"
SIGNIFICANT_DIGITS = 10  # a change of 0.01% of a total still keeps 6 digits; the file stays small


class PointScores(NamedTuple):
    """One scoring point of a run: per-item totals before and after, and the held-out probe
    its learning is corrected by (TriviaQA's questions, or a user file's own)."""

    before: ProbeItems
    after: ProbeItems
    heldout_probe: str | None


def _compact(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-item means (every ``den`` 1.0: exact match, answer log-prob) keep no ``den``."""
    return {probe: {m: ({k: v for k, v in block.items() if k != "den"}
                        if all(d == 1.0 for d in block["den"]) else block)
                    for m, block in by_metric.items()} for probe, by_metric in metrics.items()}


def _expanded(metrics: Mapping[str, Any]) -> ProbeItems:
    return items_from_json({probe: {m: {"den": [1.0] * len(block["num"]), **block}
                                    for m, block in by_metric.items()}
                            for probe, by_metric in metrics.items()})


def _rounded(data: Any) -> Any:
    if isinstance(data, float):
        return float(f"{data:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(data, list):
        return [_rounded(x) for x in data]
    if isinstance(data, dict):
        return {k: _rounded(v) for k, v in data.items()}
    return data


def point_json(before: ProbeItems, after: ProbeItems) -> dict[str, Any]:
    """One scoring point's totals, ready for :func:`write_item_scores`."""
    return {"before": _rounded(_compact(items_to_json(before))),
            "after": _rounded(_compact(items_to_json(after)))}


def write_item_scores(run_dir: Path, points: Mapping[str, dict[str, Any]],
                      heldout_probe: str | None) -> Path:
    """Write ``{point: point_json(...)}`` atomically, one compact line; ``point`` is ``end``
    or a fact count (a count whose scores are the end's is kept once, as ``end_facts``)."""
    end = points.get(END)
    same = [k for k, v in points.items() if k != END and v == end]
    document = {"points": {k: v for k, v in points.items() if k not in same},
                "end_facts": same[0] if same else None, "heldout_probe": heldout_probe}
    path = Path(run_dir) / ITEMS_FILE
    atomic_write_text(path, json.dumps(document, separators=(",", ":"), sort_keys=True) + "\n")
    return path


def load_item_scores(run_dir: Path, facts: int | None = None) -> PointScores:
    """A run's per-item totals at its end, or after its first ``facts`` facts; a clear
    error names what the run holds when the point or the file is missing."""
    path = Path(run_dir) / ITEMS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the run predates per-item scores (items.json); run it "
            "again, into a new directory, to compare it item by item")
    document = json.loads(path.read_text(encoding="utf-8"))
    points = document.get("points", {})
    key = END if facts is None or str(facts) == document.get("end_facts") else str(facts)
    if key not in points:
        held = [k for k in points if k != END]
        if END in points:
            held.append(f"the end ({document.get('end_facts') or 'its last'} facts)")
        raise KeyError(f"{path} has no scores after {facts} facts; it holds: "
                       f"{', '.join(held) or 'nothing'}")
    point = points[key]
    return PointScores(_expanded(point["before"]), _expanded(point["after"]),
                       document.get("heldout_probe"))
