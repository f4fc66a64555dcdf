"""Learning-vs-forgetting frontiers, forgetting at matched learning, and curves along the stream.

A method that learns nothing forgets nothing, so methods are compared at the same amount of
learning (Lin et al. 2025): each method sweeps its own grid (SMF: lr x top_t, LoRA / full:
lr); every grid point is one (learning, forgetting) pair per probe and draw (seed x fact
draw); matched numbers are interpolated per draw, then averaged with a 95% interval.

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from smfexp.reporting.collect import (
    NO_SELECTOR,
    RESULTS,
    TARGET,
    draw_id,
    grid_point,
    score_key,
)
from smfexp.reporting.plots import group_label, new_figure
from smfexp.reporting.stats import MeanCI, ci_half, fmt_ci, mean_ci, overlap_text
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


def line_order(label: str) -> tuple:
    method, _, selector = label.partition("/")
    return rank(method, METHOD_ORDER), rank(selector or NO_SELECTOR, SELECTOR_ORDER), label


def draw_column(grid: pd.DataFrame) -> str:
    """The column that tells replicates apart: ``draw`` (seed + fact draw), else ``seed``."""
    return "draw" if "draw" in grid else "seed"


def grid_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (line, grid point, probe, draw): learning and forgetting of ok runs."""
    columns = ["line", "point", "probe", "seed", "draw", "learning", "forgetting"]
    ok = df[df["status"] == "ok"] if "status" in df else df
    if ok.empty:
        return pd.DataFrame(columns=columns)
    learning = learning_column(ok)
    rows = []
    for probe, forgetting in forgetting_columns(ok).items():
        for idx, run in ok.iterrows():
            rows.append({"line": line_label(run["method"], run.get("selector")),
                         "point": grid_point(run.get("overrides")), "probe": probe,
                         "seed": run.get("seed"), "draw": run_draw(run),
                         "learning": learning[idx], "forgetting": forgetting[idx]})
    return pd.DataFrame(rows, columns=columns).dropna(subset=["learning", "forgetting"])


def run_draw(run: pd.Series) -> str:
    """A run's replicate id, also for tables written before ``draw`` existed."""
    draw = run.get("draw")
    if isinstance(draw, str) and draw:
        return draw
    return draw_id(run.get("seed"), run.get("facts_seed"))


def mean_points(grid: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95% CI half-width over draws per (line, point, probe)."""
    if grid.empty:
        return grid
    agg = grid.groupby(["line", "point", "probe"], sort=False).agg(
        learning=("learning", "mean"), learning_std=("learning", "std"),
        learning_ci=("learning", ci_half),
        forgetting=("forgetting", "mean"), forgetting_std=("forgetting", "std"),
        forgetting_ci=("forgetting", ci_half), draws=("learning", "size"))
    return agg.reset_index()


def matched_learning(grid: pd.DataFrame, levels: Sequence[float] = LEVELS) -> pd.DataFrame:
    """Forgetting of every line at each learning level: per draw along that draw's own
    frontier, then mean, std and 95% CI over the draws that reach the level (never the
    frontier of the means, which would hide how much the draws disagree)."""
    rows = []
    draw = draw_column(grid)
    for (line, probe), block in grid.groupby(["line", "probe"], sort=False):
        per_draw = [frontier(Point(r.learning, r.forgetting) for r in draw_rows.itertuples())
                    for _, draw_rows in block.groupby(draw, dropna=False)]
        for level in levels:
            values = [v for f in per_draw if (v := forgetting_at(f, level)) is not None]
            ci = mean_ci(values)
            rows.append({"line": line, "probe": probe, "level": level,
                         "forgetting": ci.mean if values else None,
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                         "ci": ci.half if ci.has_interval else None,
                         "draws": len(values), "of": len(per_draw)})
    return pd.DataFrame(rows, columns=["line", "probe", "level", "forgetting", "std", "ci",
                                       "draws", "of"])


# --------------------------------------------------------------------------- levels
@dataclass(frozen=True)
class Levels:
    """The learning levels a matched table compares at, and why (empty: the standard ones)."""

    values: tuple[float, ...]
    note: str = ""


def line_reach(grid: pd.DataFrame, within: Sequence[str] = ()) -> dict[str, float]:
    """Per line, the most learning every one of its draws reaches (min over draws, and over
    ``within`` groups such as stream lengths, of each draw's best point)."""
    if grid.empty:
        return {}
    best = grid.groupby(["line", *within, draw_column(grid)], dropna=False)["learning"].max()
    return {str(k): float(v) for k, v in best.groupby(level=0).min().items()}


def choose_levels(grid: pd.DataFrame, standard: Sequence[float] = LEVELS, step: float = 0.05,
                  within: Sequence[str] = ()) -> Levels:
    """``standard`` when every line reaches its first level; else steps of ``step`` (1 point
    below 5%) up to the lowest line's reach, so the table still compares every method."""
    reach = line_reach(grid, within)
    if not reach or min(reach.values()) >= standard[0]:
        return Levels(tuple(standard))
    line, lowest = min(reach.items(), key=lambda kv: (kv[1], kv[0]))
    step = step if lowest >= step else 0.01
    count = math.floor(lowest / step + 1e-9)
    if count == 0:
        return Levels(tuple(standard), f"No common level: {line} learns at most {lowest:.1%} "
                      "in some draw, so no level below it compares every method.")
    values = tuple(round(step * k, 6) for k in range(1, count + 1))
    return Levels(values, (
        f"Levels used: {', '.join(f'{v:.0%}' for v in values)}. {line} reaches only "
        f"{lowest:.1%} learned (the best grid point of its weakest draw), below "
        f"{standard[0]:.0%}, so the table compares at steps of {step:.0%} up to that lowest "
        "maximum: the levels every method reaches."))


# --------------------------------------------------------------------------- the table
def _ci_of(at: pd.DataFrame, line: str) -> MeanCI:
    row = at.loc[line]
    if row["forgetting"] is None or pd.isna(row["forgetting"]):
        return MeanCI(math.nan, math.nan, 0)
    half = row["ci"]
    return MeanCI(float(row["forgetting"]),
                  math.nan if half is None or pd.isna(half) else float(half), int(row["draws"]))


def _cell(row: pd.Series) -> str:
    if row["forgetting"] is None or pd.isna(row["forgetting"]):
        return "not reached"
    ci = MeanCI(float(row["forgetting"]),
                math.nan if row["ci"] is None or pd.isna(row["ci"]) else float(row["ci"]),
                int(row["draws"]))
    text = fmt_ci(ci, signed=True, digits=".2f", unit="%", show_n=False)
    if ci.n < row["of"]:
        return f"{text} (n={ci.n} of {int(row['of'])} draws)"
    return f"{text} (n={ci.n})" if ci.n > 1 else f"{text} (n=1, no CI)"


def _ratio(mine: MeanCI, ref: MeanCI) -> str:
    if ref.n == 0 or mine.n == 0:
        return "-"
    return f"{mine.mean / ref.mean:.2f}x" if ref.mean > 0 else \
        f"{mine.mean:+.2f} vs {ref.mean:+.2f}"


def _best_baseline(at: pd.DataFrame, baselines: Sequence[str]) -> MeanCI | None:
    reached = [ci for b in baselines if (ci := _ci_of(at, b)).n > 0]
    return min(reached, key=lambda ci: ci.mean) if reached else None


def comparison_table(block: pd.DataFrame, levels: Sequence[float],
                     lead: str | None = None) -> str:
    """One probe's matched table: a row per level, a column per line, and per SMF line its
    ratio to the best baseline and whether their 95% intervals overlap. ``lead``: a column
    of ``block`` (e.g. ``facts``, the stream length) whose values split the rows."""
    lines = sorted(block["line"].unique(), key=line_order)
    baselines = [ln for ln in lines if ln in BASELINES]
    smf_lines = [ln for ln in lines if ln.startswith("smf")] if baselines else []
    header = [*([lead] if lead else []), "learned", *lines]
    for ln in smf_lines:
        header += [f"{ln} / best baseline", f"{ln} vs best baseline: 95% CIs"]
    groups = block.groupby(lead, sort=True) if lead else [(None, block)]
    rows = []
    for value, sub in groups:
        for level in levels:
            at = sub[sub["level"] == level].set_index("line")
            cells = [*([str(value)] if lead else []), f"{level:.0%}",
                     *(_cell(at.loc[ln]) if ln in at.index else "not run" for ln in lines)]
            best = _best_baseline(at, [b for b in baselines if b in at.index])
            for ln in smf_lines:
                mine = _ci_of(at, ln) if ln in at.index else MeanCI(math.nan, math.nan, 0)
                if best is None or mine.n == 0:
                    cells += ["-", "-"]
                else:
                    cells += [_ratio(mine, best), overlap_text(mine, best)]
            rows.append(cells)
    return md_table(header, rows)


MATCHED_NOTE = (
    "Learning = share of the trained facts learned beyond the held-out questions; "
    "forgetting = the probe's relative change, + = worse. Interpolated along each draw's "
    "frontier over its method's grid, then mean ± 95% t-interval half-width over the draws "
    "that reach the level (n; `n=k of m draws`: only k of m reach it). Best baseline = the "
    "LoRA / full finetuning line forgetting least at that level; `overlap` / `separate`: "
    "whether its interval and SMF's overlap (`n<2`: one of them has no interval).")


def matched_markdown(grid: pd.DataFrame, levels: Sequence[float] | None = None,
                     note: str = "") -> str:
    """One table per probe: forgetting at each learning level, SMF's ratio to the best
    baseline and whether their intervals overlap. ``levels=None``: :func:`choose_levels`;
    ``note``: what the grid is, said above the tables."""
    if grid.empty:
        return ""
    chosen = choose_levels(grid) if levels is None else Levels(tuple(levels))
    table = matched_learning(grid, chosen.values)
    parts = ["### Forgetting at matched learning\n", MATCHED_NOTE + "\n"]
    if note:
        parts.append(note + "\n")
    if chosen.note:
        parts.append(chosen.note + "\n")
    for probe, block in table.groupby("probe", sort=False):
        metric = FORGETTING_METRICS[probe][0]
        parts.append(f"**{probe}** ({metric}, % change)\n\n"
                     f"{comparison_table(block, chosen.values)}\n")
    return "\n".join(parts) + "\n"


def frontier_figure(grid: pd.DataFrame) -> Figure:
    """One panel per probe: x = learning (% of facts), y = forgetting; grid points (mean ±
    95% CI over draws) and each method's frontier from the base at the origin."""
    points = mean_points(grid)
    probes = list(dict.fromkeys(points["probe"])) if not points.empty else []
    fig = new_figure(4.6 * max(len(probes), 1), 3.8)
    if not probes:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no run measured learning and forgetting", ha="center", va="center")
        ax.set_axis_off()
        return fig
    lines = sorted(points["line"].unique(), key=line_order)
    colors = {ln: f"C{i % 10}" for i, ln in enumerate(lines)}
    for i, probe in enumerate(probes, 1):
        ax = fig.add_subplot(1, len(probes), i)
        block = points[points["probe"] == probe]
        for line in lines:
            mine = block[block["line"] == line]
            if mine.empty:
                continue
            ax.errorbar(100 * mine["learning"], mine["forgetting"],
                        xerr=100 * mine["learning_ci"].fillna(0),
                        yerr=mine["forgetting_ci"].fillna(0), fmt="o", ms=4, alpha=0.55,
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
def each_results(df: pd.DataFrame) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(labels, results.json) of every ok run: labels = line, point, draw, run_dir."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    for index, run in ok.iterrows():
        try:
            results = json.loads((Path(run["run_dir"]) / RESULTS).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(results, dict):
            labels = {"line": line_label(run["method"], run.get("selector")),
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
    return pd.DataFrame(rows)


def stream_mean(long: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95% CI half-width (``ci``) over draws of :func:`stream_points` per
    (line, point, probe, metric, facts), by increasing facts; ``seeds`` says how many runs
    reached that point."""
    keys = ["line", "point", "probe", "metric", "facts"]
    if long.empty:
        return pd.DataFrame(columns=[*keys, "value", "std", "ci", "seeds"])
    agg = long.groupby(keys, sort=False, dropna=False).agg(
        value=("value", "mean"), std=("value", "std"), ci=("value", ci_half),
        seeds=("value", "size"))
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
    grid point (mean over draws, its 95% CI shaded), coloured by method."""
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
    lines = sorted(long["line"].unique(), key=line_order)
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
                spread = curve["ci"].fillna(0)
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
