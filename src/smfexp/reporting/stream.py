"""Scores along the stream: every run's probe scores as the facts arrive (results.json
``stream.points``), read once per run and drawn a method (and six grid points) per row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from smfexp.reporting.collect import RESULTS, TARGET, grid_point
from smfexp.reporting.frontier import FORGETTING_METRICS, run_draw
from smfexp.reporting.plots import Panel, curve_grid, line_label


def each_results(df: pd.DataFrame) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(labels, results.json) of every ok run: labels = line, point, draw, run_dir."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    for index, run in ok.iterrows():
        try:
            results = json.loads((Path(run["run_dir"]) / RESULTS).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(results, dict):
            labels = {"line": line_label(run["method"], run.get("selector"), run.get("variant")),
                      "point": grid_point(run.get("overrides")), "draw": run_draw(run),
                      "run_dir": str(run["run_dir"]), "index": index}
            metric = run.get("target_metric")
            labels["target_metric"] = metric if isinstance(metric, str) else "exact_match"
            yield labels, results


def stream_points(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of every run's stream points: line, point, seed, facts, probe, metric, value
    (the ``stream/<probe>/<metric>`` values; row counts ``n`` left out, as in the logs)."""
    rows = []
    seeds = df["seed"] if "seed" in df else pd.Series(dtype=object)
    for labels, results in each_results(df):
        stream = results.get("stream")
        for entry in (stream or {}).get("points", []) if isinstance(stream, dict) else []:
            for probe, metrics in (entry.get("scores") or {}).items():
                for metric, value in (metrics or {}).items():
                    if metric != "n" and isinstance(value, int | float) \
                            and not isinstance(value, bool):
                        rows.append({"line": labels["line"], "point": labels["point"],
                                     "seed": seeds.get(labels["index"]), "draw": labels["draw"],
                                     "facts": entry.get("facts"),
                                     "probe": probe, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=["line", "point", "seed", "draw", "facts", "probe",
                                       "metric", "value"])


def stream_target_metric(df: pd.DataFrame, default: str = "exact_match") -> str:
    """The runs' most common target metric (what the learning curve shows), else ``default``."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    metrics = ok.get("target_metric", pd.Series(dtype=object)).dropna().astype(str)
    return str(metrics.mode().iloc[0]) if not metrics.empty else default


def stream_panels(long: pd.DataFrame, target_metric: str) -> list[Panel]:
    """Learning (the target in ``target_metric``), then each forgetting probe's continuous
    metric, for those the long table holds."""
    wanted = [(TARGET, target_metric), *((p, m) for p, (m, _) in FORGETTING_METRICS.items())]
    panels = []
    for probe, metric in wanted:
        if not long.empty and ((long["probe"] == probe) & (long["metric"] == metric)).any():
            learning = probe == TARGET
            panels.append(Panel(probe, metric,
                                "learning" if learning else f"forgetting: {probe}",
                                f"{'trained facts' if learning else probe}: {metric}"))
    return panels


def stream_figure(df: pd.DataFrame, target_metric: str | None = None) -> Figure:
    """Facts learned (the target subset's score, by default in the runs' target metric) and
    each probe's continuous metric against the facts the stream has reached: a row per
    method (per six grid points), a labelled curve per grid point (mean over draws, 95% CI
    shaded)."""
    long = stream_points(df)
    panels = stream_panels(long, target_metric or stream_target_metric(df))
    return curve_grid(long, long.iloc[0:0], panels, "facts seen",
                      empty="no stream scores (set eval.every_n_facts)")
