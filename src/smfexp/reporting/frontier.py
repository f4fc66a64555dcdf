"""Learning-vs-forgetting frontiers, forgetting at matched learning, and curves along the stream.

A method that learns nothing forgets nothing, so methods are compared at the same amount of
learning (Lin et al. 2025): each method sweeps its own grid (SMF: lr x top_t, LoRA / full:
lr); every grid point is one (learning, forgetting) pair per probe, averaged over seeds.

- learning: the target's gain beyond the held-out questions (``beyond_heldout/target/<m>``,
  what was learned about the trained facts, not the answer format), else its plain gain;
  for exact match it is the share of the facts learned.
- forgetting: each probe's relative change in % on a continuous metric, signed so that + is
  worse (a perplexity rise, an answer log-prob fall).
- frontier: the grid points no other point beats on both axes, with the base model at the
  origin; forgetting at learning L is interpolated linearly along it, "not reached" beyond
  its last point.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from smfexp.reporting.collect import NO_SELECTOR, RESULTS, TARGET, score_key
from smfexp.reporting.plots import group_label, new_figure
from smfexp.reporting.tables import METHOD_ORDER, SELECTOR_ORDER, md_table, rank

# continuous metric per forgetting probe: (metric, higher is better)
FORGETTING_METRICS: dict[str, tuple[str, bool]] = {
    "wikitext": ("word_perplexity", False),
    "triviaqa": ("answer_logprob", True),
    "nq_open": ("answer_logprob", True),
    "gsm8k": ("loss", False),
    "retention": ("logprob", True),    # continuous: moves before greedy accuracy does
    "medmcqa": ("acc", True),
}
LEVELS = (0.25, 0.5, 0.75)
BASELINES = ("lora", "full")
_GROUPING = re.compile(r"^(seed|method|selector)=")


@dataclass(frozen=True)
class Point:
    learning: float
    forgetting: float


def frontier(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points, base (0, 0) included, by increasing learning.

    A point is dominated when another learns at least as much and forgets no more (and is
    not the same point). The result rises in both coordinates, so interpolating along it is
    well defined even when the grid itself is not monotone (a higher lr that learns less).
    """
    pts = sorted({Point(0.0, 0.0), *(p for p in points
                                     if math.isfinite(p.learning) and math.isfinite(p.forgetting))},
                 key=lambda p: (-p.learning, p.forgetting))
    kept: list[Point] = []
    best = math.inf
    for p in pts:  # most learning first: keep a point only if it forgets less than all so far
        if p.forgetting < best:
            kept.append(p)
            best = p.forgetting
    return kept[::-1]


def forgetting_at(front: Sequence[Point], level: float) -> float | None:
    """Forgetting interpolated at ``level`` along ``front`` (from :func:`frontier`); None
    when the frontier never reaches that much learning."""
    if not front or level > front[-1].learning:
        return None
    for a, b in itertools.pairwise(front):
        if a.learning <= level <= b.learning:
            if b.learning == a.learning:
                return a.forgetting
            t = (level - a.learning) / (b.learning - a.learning)
            return a.forgetting + t * (b.forgetting - a.forgetting)
    return front[0].forgetting if level <= front[0].learning else None


# --------------------------------------------------------------------------- from runs
def grid_point(overrides: object) -> str:
    """A run's grid point: its overrides without seed / method / selector (the line)."""
    if not isinstance(overrides, str) or not overrides.strip():
        return "defaults"
    kept = [o for o in overrides.split() if not _GROUPING.match(o.lstrip("+~"))
            and not o.startswith("hydra.")]
    return " ".join(kept) or "defaults"


def learning_column(df: pd.DataFrame) -> pd.Series:
    """Learning per run (share of the facts for exact match), NaN when not measured."""
    out = pd.Series(np.nan, index=df.index)
    for metric in df.get("target_metric", pd.Series(dtype=object)).dropna().unique():
        rows = df["target_metric"] == metric
        for stage in ("beyond_heldout", "delta"):
            col = score_key(stage, TARGET, str(metric))
            if col in df:
                fill = rows & out.isna()
                out[fill] = df.loc[fill, col]
    return out


def forgetting_columns(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Probe -> forgetting % per run (+ = worse), for the probes the runs measured."""
    out = {}
    for probe, (metric, higher) in FORGETTING_METRICS.items():
        col = score_key("rel_delta_pct", probe, metric)
        if col in df and df[col].notna().any():
            out[probe] = -df[col] if higher else df[col]
    return out


def line_label(method: str, selector: object) -> str:
    return group_label(str(method), str(selector) if selector else NO_SELECTOR)


def _line_order(label: str) -> tuple:
    method, _, selector = label.partition("/")
    return rank(method, METHOD_ORDER), rank(selector or NO_SELECTOR, SELECTOR_ORDER), label


def grid_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (line, grid point, probe, seed): learning and forgetting of ok runs."""
    columns = ["line", "point", "probe", "seed", "learning", "forgetting"]
    ok = df[df["status"] == "ok"] if "status" in df else df
    if ok.empty:
        return pd.DataFrame(columns=columns)
    learning = learning_column(ok)
    rows = []
    for probe, forgetting in forgetting_columns(ok).items():
        for idx, run in ok.iterrows():
            rows.append({"line": line_label(run["method"], run.get("selector")),
                         "point": grid_point(run.get("overrides")), "probe": probe,
                         "seed": run.get("seed"), "learning": learning[idx],
                         "forgetting": forgetting[idx]})
    return pd.DataFrame(rows, columns=columns).dropna(subset=["learning", "forgetting"])


def mean_points(grid: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (line, point, probe)."""
    if grid.empty:
        return grid
    agg = grid.groupby(["line", "point", "probe"], sort=False).agg(
        learning=("learning", "mean"), learning_std=("learning", "std"),
        forgetting=("forgetting", "mean"), forgetting_std=("forgetting", "std"),
        seeds=("learning", "size"))
    return agg.reset_index()


def matched_learning(grid: pd.DataFrame, levels: Sequence[float] = LEVELS) -> pd.DataFrame:
    """Forgetting of every line at each learning level: per seed along that seed's own
    frontier, then mean / std over the seeds that reach the level."""
    rows = []
    for (line, probe), block in grid.groupby(["line", "probe"], sort=False):
        per_seed = [frontier(Point(r.learning, r.forgetting) for r in seed_rows.itertuples())
                    for _, seed_rows in block.groupby("seed", dropna=False)]
        for level in levels:
            values = [v for f in per_seed if (v := forgetting_at(f, level)) is not None]
            rows.append({"line": line, "probe": probe, "level": level,
                         "forgetting": float(np.mean(values)) if values else None,
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                         "seeds": len(values), "of": len(per_seed)})
    return pd.DataFrame(rows)


def _cell(row: pd.Series) -> str:
    if row["forgetting"] is None or pd.isna(row["forgetting"]):
        return "not reached"
    text = f"{row['forgetting']:+.2f}%"
    if row["std"] is not None and not pd.isna(row["std"]):
        text += f" ± {row['std']:.2f}"
    if row["seeds"] < row["of"]:
        text += f" ({row['seeds']}/{row['of']} seeds)"
    return text


def matched_markdown(grid: pd.DataFrame, levels: Sequence[float] = LEVELS) -> str:
    """One table per probe: forgetting at each learning level, and SMF's ratio to the best
    baseline (LoRA / full finetuning) at that level."""
    if grid.empty:
        return ""
    table = matched_learning(grid, levels)
    parts = ["### Forgetting at matched learning\n",
             "Learning = share of the trained facts learned beyond the held-out questions; "
             "forgetting = the probe's relative change, + = worse. Interpolated along each "
             "method's frontier over its grid (per seed, then mean ± std).\n"]
    for probe, block in table.groupby("probe", sort=False):
        lines = sorted(block["line"].unique(), key=_line_order)
        baselines = [ln for ln in lines if ln in BASELINES]
        header = ["learned", *lines]
        smf_lines = [ln for ln in lines if ln.startswith("smf")]
        if baselines:
            header += [f"{ln} / best baseline" for ln in smf_lines]
        rows = []
        for level in levels:
            at = block[block["level"] == level].set_index("line")
            cells = [f"{level:.0%}", *(_cell(at.loc[ln]) for ln in lines)]
            best = [at.loc[b, "forgetting"] for b in baselines
                    if at.loc[b, "forgetting"] is not None and not pd.isna(at.loc[b, "forgetting"])]
            for ln in smf_lines if baselines else []:
                mine = at.loc[ln, "forgetting"]
                if mine is None or pd.isna(mine) or not best:
                    cells.append("-")
                else:
                    ref = min(best)
                    cells.append(f"{mine / ref:.2f}x" if ref > 0 else f"{mine:+.2f} vs {ref:+.2f}")
            rows.append(cells)
        metric = FORGETTING_METRICS[probe][0]
        parts.append(f"**{probe}** ({metric}, % change)\n\n{md_table(header, rows)}\n")
    return "\n".join(parts) + "\n"


def frontier_figure(grid: pd.DataFrame) -> Figure:
    """One panel per probe: x = learning (% of facts), y = forgetting; grid points (mean ±
    std over seeds) and each method's frontier from the base at the origin."""
    points = mean_points(grid)
    probes = list(dict.fromkeys(points["probe"])) if not points.empty else []
    fig = new_figure(4.6 * max(len(probes), 1), 3.8)
    if not probes:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no run measured learning and forgetting", ha="center", va="center")
        ax.set_axis_off()
        return fig
    lines = sorted(points["line"].unique(), key=_line_order)
    colors = {ln: f"C{i % 10}" for i, ln in enumerate(lines)}
    for i, probe in enumerate(probes, 1):
        ax = fig.add_subplot(1, len(probes), i)
        block = points[points["probe"] == probe]
        for line in lines:
            mine = block[block["line"] == line]
            if mine.empty:
                continue
            ax.errorbar(100 * mine["learning"], mine["forgetting"],
                        xerr=100 * mine["learning_std"].fillna(0),
                        yerr=mine["forgetting_std"].fillna(0), fmt="o", ms=4, alpha=0.55,
                        color=colors[line], elinewidth=0.8)
            front = frontier(Point(r.learning, r.forgetting) for r in mine.itertuples())
            if front[0] != Point(0.0, 0.0):  # a point learns more *and* forgets less than
                front = [Point(0.0, 0.0), *front]  # the base: the line still starts there
            ax.plot([100 * p.learning for p in front], [p.forgetting for p in front], "-",
                    color=colors[line], label=line, lw=1.6)
        ax.scatter([0], [0], marker="*", s=90, color="black", zorder=5, label="base")
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        metric = FORGETTING_METRICS[probe][0]
        ax.set_xlabel("facts learned beyond held-out (%)")
        ax.set_ylabel(f"forgetting on {probe}: {metric} change (%)\n(↑ more forgetting)")
        ax.set_title(probe)
        if i == 1:
            ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- the stream
def stream_points(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of every run's stream points: line, point, seed, facts, probe, metric, value
    (the ``stream/<probe>/<metric>`` values; row counts ``n`` left out, as in the logs)."""
    rows = []
    ok = df[df["status"] == "ok"] if "status" in df else df
    for _, run in ok.iterrows():
        try:
            results = json.loads((Path(run["run_dir"]) / RESULTS).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        stream = results.get("stream") if isinstance(results, dict) else None
        for entry in (stream or {}).get("points", []) if isinstance(stream, dict) else []:
            for probe, metrics in (entry.get("scores") or {}).items():
                for metric, value in (metrics or {}).items():
                    if metric != "n" and isinstance(value, int | float) \
                            and not isinstance(value, bool):
                        rows.append({"line": line_label(run["method"], run.get("selector")),
                                     "point": grid_point(run.get("overrides")),
                                     "seed": run.get("seed"), "facts": entry.get("facts"),
                                     "probe": probe, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows)


def stream_mean(long: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of :func:`stream_points` per (line, point, probe, metric,
    facts), by increasing facts; ``seeds`` says how many runs reached that point."""
    keys = ["line", "point", "probe", "metric", "facts"]
    if long.empty:
        return pd.DataFrame(columns=[*keys, "value", "std", "seeds"])
    agg = long.groupby(keys, sort=False, dropna=False).agg(
        value=("value", "mean"), std=("value", "std"), seeds=("value", "size"))
    return agg.reset_index().sort_values(["line", "point", "probe", "metric", "facts"],
                                         kind="stable", ignore_index=True)


def stream_target_metric(df: pd.DataFrame, default: str = "exact_match") -> str:
    """The runs' most common target metric (what the learning curve shows), else ``default``."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    metrics = ok.get("target_metric", pd.Series(dtype=object)).dropna().astype(str)
    return str(metrics.mode().iloc[0]) if not metrics.empty else default


def stream_figure(df: pd.DataFrame, target_metric: str | None = None) -> Figure:
    """Facts learned (the target subset's score, by default in the runs' target metric) and
    each probe's continuous metric against the facts the stream has reached; one line per
    grid point (mean over seeds, ± std shaded), coloured by method."""
    target_metric = target_metric or stream_target_metric(df)
    long = stream_points(df)
    panels: list[tuple[str, str]] = []
    if not long.empty:
        if ((long["probe"] == TARGET) & (long["metric"] == target_metric)).any():
            panels.append((TARGET, target_metric))
        for probe, (metric, _) in FORGETTING_METRICS.items():
            if ((long["probe"] == probe) & (long["metric"] == metric)).any():
                panels.append((probe, metric))
    fig = new_figure(4.2 * max(len(panels), 1), 3.5)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no stream scores (set eval.every_n_facts)", ha="center",
                va="center")
        ax.set_axis_off()
        return fig
    lines = sorted(long["line"].unique(), key=_line_order)
    colors = {ln: f"C{i % 10}" for i, ln in enumerate(lines)}
    for i, (probe, metric) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        block = long[(long["probe"] == probe) & (long["metric"] == metric)]
        means = stream_mean(block)
        for line in lines:  # legend in method order, one entry per method
            curves = means[means["line"] == line].groupby("point", sort=False)
            for n, (_, curve) in enumerate(curves):
                ax.plot(curve["facts"], curve["value"], "-", lw=1, alpha=0.8,
                        color=colors[line], label=None if n else line)
                spread = curve["std"].fillna(0)
                if (spread > 0).any():
                    ax.fill_between(curve["facts"], curve["value"] - spread,
                                    curve["value"] + spread, color=colors[line], alpha=0.15,
                                    lw=0)
        ax.set_xlabel("facts seen")
        ax.set_ylabel(f"{'trained facts' if probe == TARGET else probe}: {metric}")
        ax.set_title("learning" if probe == TARGET else f"forgetting: {probe}")
        if i == 1:
            ax.legend(fontsize=8)
    return fig
