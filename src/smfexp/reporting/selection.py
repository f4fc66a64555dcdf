"""How specific SMF's row selection was, per grid point: the end-of-run selection diagnostics
(``results["smf"]["diagnostics"]``, one entry per memory layer) averaged over layers, then
mean and 95% interval over draws. This is what tells two backgrounds (or selectors) apart
before any forgetting shows: a selection that avoids rows general text reads has a small
``fact_background_share`` and ``touched_background_share``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from smfexp.reporting.plots import line_order
from smfexp.reporting.stats import fmt_ci, mean_ci
from smfexp.reporting.stream import each_results
from smfexp.reporting.tables import md_table

# diagnostic -> (what it means, shown as a percentage)
SELECTION_KEYS: dict[str, str] = {
    "overlap": "rows a fact shares with the other facts' selections",
    "fact_background_share": "background reads landing on one fact's rows",
    "touched_background_share": "background reads landing on every row written",
    "answer_weight_on_selected": "the answer tokens' memory weight on the rows written",
}


def _layer_mean(diagnostics: Any, key: str) -> float | None:
    """Mean of ``key`` over the memory layers' diagnostic entries (None if none has it)."""
    if not isinstance(diagnostics, list):
        return None
    values = [float(d[key]) for d in diagnostics if isinstance(d, Mapping)
              and isinstance(d.get(key), int | float) and not isinstance(d.get(key), bool)
              and math.isfinite(float(d[key]))]
    return sum(values) / len(values) if values else None


def selection_points(df: pd.DataFrame) -> pd.DataFrame:
    """line, point, draw, key, value: every SMF run's layer-mean selection diagnostics and the
    share of value rows it wrote (``rows_written``)."""
    rows = []
    for labels, results in each_results(df):
        smf = results.get("smf")
        if not isinstance(smf, Mapping):
            continue
        values = {key: _layer_mean(smf.get("diagnostics"), key) for key in SELECTION_KEYS}
        slots, written = smf.get("slots_per_layer"), smf.get("updated_rows_per_layer")
        if isinstance(slots, list) and isinstance(written, list) and sum(slots):
            values["rows_written"] = sum(written) / sum(slots)
        for key, value in values.items():
            if value is not None:
                rows.append({"line": labels["line"], "point": labels["point"],
                             "draw": labels["draw"], "key": key, "value": value})
    return pd.DataFrame(rows, columns=["line", "point", "draw", "key", "value"])


def selection_markdown(points: pd.DataFrame) -> str:
    """One row per (line, point): each diagnostic in %, mean ± 95% CI over draws (n)."""
    if points.empty:
        return ""
    keys = [k for k in [*SELECTION_KEYS, "rows_written"] if (points["key"] == k).any()]
    index = sorted({(r.line, r.point) for r in points.itertuples()},
                   key=lambda k: (line_order(k[0]), k[1]))
    rows = []
    for line, point in index:
        block = points[(points["line"] == line) & (points["point"] == point)]
        cells = [line, point]
        for key in keys:
            values = block.loc[block["key"] == key, "value"]
            cells.append(fmt_ci(mean_ci(100 * values), digits=".2f", unit="%")
                         if len(values) else "")
        rows.append(cells)
    legend = "; ".join(f"`{k}`: {SELECTION_KEYS[k]}" for k in keys if k in SELECTION_KEYS)
    return ("### Selection specificity (SMF, end of run)\n\n"
            f"{md_table(['method', 'point', *keys], rows)}\n\n"
            f"Mean over memory layers, then mean ± 95% CI over draws (n). {legend}; "
            "`rows_written`: share of value rows the run wrote. Background shares are "
            "measured against the background the run selected with.\n\n")
