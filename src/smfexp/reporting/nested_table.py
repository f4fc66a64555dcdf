"""Every grid point's raw scores after each N facts: the lever table.

Why: matched learning compares methods at the same learning, but a lever screen asks a
plainer question - did this setting learn as much and forget less than the default after N
facts? That needs each grid point's own learning and forgetting side by side, each with the
spread over draws and the probe's own paired interval, so a move inside either is visible as
noise.
"""

from __future__ import annotations

import pandas as pd

from smfexp.reporting.frontier import FORGETTING_METRICS
from smfexp.reporting.plots import line_order
from smfexp.reporting.stats import ProbeCI, fmt_ci, mean_ci, typical_probe_ci
from smfexp.reporting.tables import md_table


def _cell(block: pd.DataFrame, value: str, low: str, high: str, scale: float,
          digits: str, unit: str) -> str:
    """Mean ± 95% over draws (n) and the runs' typical own interval (``probe ± h``, † where
    it covers 0)."""
    scaled = block[[value, low, high]].astype(float) * scale  # missing bounds: NaN, no CI
    probe = typical_probe_ci(ProbeCI.around(*row) for row in scaled.itertuples(index=False))
    return fmt_ci(mean_ci(scaled[value]), signed=True, digits=digits, unit=unit, probe=probe)


def nested_rows(nested: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per (line, grid point, N), learning beyond held-out in
    points, then each forgetting probe's % change (+ = worse)."""
    probes = [p for p in FORGETTING_METRICS if p in set(nested["probe"])]
    header = ["method", "point", "facts", "beyond held-out (points)",
              *(f"{p} ({FORGETTING_METRICS[p][0]}, %)" for p in probes)]
    rows = []
    keys = ["line", "point", "facts"]
    groups = sorted(nested.groupby(keys, sort=False),
                    key=lambda kv: (line_order(kv[0][0]), kv[0][1], kv[0][2]))
    for (line, point, facts), block in groups:
        per_draw = block.drop_duplicates("draw")
        cells = [line, point, str(facts),
                 _cell(per_draw, "learning", "learning_lo", "learning_hi", 100, ".1f", "")]
        for probe in probes:
            mine = block[block["probe"] == probe]
            cells.append(_cell(mine, "forgetting", "forgetting_lo", "forgetting_hi", 1,
                               ".2f", "%") if not mine.empty else "–")
        rows.append(cells)
    return header, rows


def nested_markdown(nested: pd.DataFrame) -> str:
    """The section: every grid point after each N, or nothing without nested results."""
    if nested.empty:
        return ""
    header, rows = nested_rows(nested)
    own = nested[["forgetting_lo", "learning_lo"]].notna().any().any()
    probe = ("; `probe ± h`: the runs' typical own paired 95% half-width (median over "
             "draws), † where it covers 0. A lever's move inside either interval is not a "
             "finding.") if own else ". A lever's move inside it is not a finding."
    return ("### Every grid point after N facts\n\n"
            f"{md_table(header, rows)}\n\n"
            "Each run scored after its first N facts (`nested`): learning beyond the held-out "
            "questions in points, forgetting as each probe's % change (+ = worse; log-probs "
            f"flipped). Mean ± 95% t-interval over draws (n){probe}\n\n")


__all__ = ["nested_markdown", "nested_rows"]
