"""One number per run for hyperparameter search: learning minus a forgetting penalty.

``objective = learned_points - penalty * mean_over_probes(max(0, forgetting%))``

- **Learning** is in points of the target's primary metric (a proportion: accuracy, exact
  match), 100 x its change, minus the held-out questions' change when the run has them (fact
  streams: what was learned beyond the answer format). Points, not a relative change: new
  facts start at 0, where a relative change is undefined.
- **Forgetting** is the relative change (%) of each forgetting probe's primary metric, signed so
  that + = worse; probes that improve do not offset learning. Target variants (``target_seen``)
  and anything else that is not a registered probe are not forgetting probes.
"""

from __future__ import annotations

import math
from typing import Any

from smfexp.tasks import PROBES, primary_metric


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def signed_change_pct(results: dict[str, Any], probe: str, scorer: str) -> float | None:
    """Relative change (%) of ``probe``'s primary metric, positive when it got better."""
    metric, higher = primary_metric(scorer, results["protocol"])
    change = (results.get("rel_delta_pct") or {}).get(probe, {}).get(metric)
    if not _finite(change):
        return None
    return change if higher else -change


def learned_points(results: dict[str, Any]) -> float | None:
    """100 x the target's gain in its primary metric, beyond the held-out questions if any."""
    metric, higher = primary_metric(results["target_probe"], results["protocol"])
    beyond = (results.get("target_beyond_heldout") or {}).get("delta") or {}
    change = beyond.get(metric)
    if not _finite(change):
        change = (results.get("delta") or {}).get("target", {}).get(metric)
    if not _finite(change):
        return None
    return 100.0 * (change if higher else -change)


def forgetting_pct(results: dict[str, Any]) -> float:
    """Mean over the forgetting probes of how much worse each got (%, 0 if none got worse)."""
    losses = []
    for probe in results.get("after") or {}:
        if probe not in PROBES:  # the target and its variants
            continue
        change = signed_change_pct(results, probe, probe)
        if change is not None:
            losses.append(max(0.0, -change))
    return sum(losses) / len(losses) if losses else 0.0


def objective(results: dict[str, Any], forgetting_penalty: float = 1.0) -> float:
    gain = learned_points(results)
    if gain is None:
        return math.nan
    return gain - forgetting_penalty * forgetting_pct(results)
