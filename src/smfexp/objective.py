"""One number per run for hyperparameter search: target gain minus a forgetting penalty.

Units differ across metrics (accuracy, perplexity), so both sides use the relative change
in percent of each probe's primary metric, signed so that positive = better:
``objective = gain% - penalty * mean_over_probes(max(0, -change%))``.
Only forgetting is penalised; a probe that improves does not offset the target.
"""

from __future__ import annotations

import math
from typing import Any

from smfexp.tasks import primary_metric


def signed_change_pct(results: dict[str, Any], probe: str, scorer: str) -> float | None:
    """Relative change (%) of ``probe``'s primary metric, positive when it got better."""
    metric, higher = primary_metric(scorer, results["protocol"])
    change = (results.get("rel_delta_pct") or {}).get(probe, {}).get(metric)
    if change is None:
        return None
    return change if higher else -change


def objective(results: dict[str, Any], forgetting_penalty: float = 1.0) -> float:
    gain = signed_change_pct(results, "target", results["target_probe"])
    if gain is None:
        return math.nan
    losses = []
    for probe in results.get("after", {}):
        if probe == "target":
            continue
        change = signed_change_pct(results, probe, probe)
        if change is not None:
            losses.append(max(0.0, -change))
    forgetting = sum(losses) / len(losses) if losses else 0.0
    return gain - forgetting_penalty * forgetting
