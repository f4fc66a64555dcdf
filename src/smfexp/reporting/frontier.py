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
  origin; forgetting at learning L is interpolated linearly along it, not reached beyond
  its last point.
- levels: SMF meets each baseline up to the most learning both reach, so a weak baseline
  never caps the comparison with a strong one; a line short of a level says how far it got.
- each run's own paired interval (the probe's item noise) rides along: per run as its
  interval, at a matched level as the typical half-width of the runs bracketing it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from smfexp.reporting.collect import (
    TARGET,
    ci_key,
    draw_id,
    grid_point,
    items_key,
    score_key,
)
from smfexp.reporting.plots import (
    MAX_LINES,
    balanced_chunks,
    empty_figure,
    figure_legend,
    line_label,
    line_order,
    new_figure,
    point_labels,
)
from smfexp.reporting.stats import (
    UNRESOLVED_NOTE,
    MeanCI,
    ProbeCI,
    ci_half,
    fmt_ci,
    mean_ci,
    overlap_text,
    typical_probe_ci,
)
from smfexp.reporting.tables import items_note, md_table

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
# per grid row, next to learning and forgetting: each run's own paired interval (forgetting
# signed like the value, + = worse), whether it excludes 0, and the items behind them
INTERVAL_COLUMNS = ("forgetting_lo", "forgetting_hi", "forgetting_resolved", "learning_lo",
                    "learning_hi", "probe_n", "learning_n")


def is_baseline(line: str) -> bool:
    """LoRA or full finetuning, with or without a lever of its own (``full+replay``)."""
    return line.partition("+")[0] in BASELINES


@dataclass(frozen=True)
class Point:
    """A grid point (or the base at the origin); ``probe``: its own paired interval of the
    forgetting, carried along but no part of what makes two points equal."""

    learning: float
    forgetting: float
    probe: ProbeCI | None = field(default=None, compare=False)


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


def _segment(front: Sequence[Point], level: float) -> tuple[Point, Point, float] | None:
    """The frontier points around ``level`` and how far along (0 = the first); None beyond
    the last point. Below the first point (one that beats the base) it is that point."""
    if not front or level > front[-1].learning:
        return None
    if level <= front[0].learning:
        return front[0], front[0], 0.0
    for a, b in itertools.pairwise(front):
        if a.learning <= level <= b.learning:
            span = b.learning - a.learning
            return a, b, (level - a.learning) / span if span else 0.0
    return None


def forgetting_at(front: Sequence[Point], level: float) -> float | None:
    """Forgetting interpolated at ``level`` along ``front`` (from :func:`frontier`); None
    when the frontier never reaches that much learning."""
    found = _segment(front, level)
    if found is None:
        return None
    a, b, t = found
    return a.forgetting + t * (b.forgetting - a.forgetting)


def probe_at(front: Sequence[Point], level: float) -> ProbeCI | None:
    """The paired interval at ``level``: interpolated between the runs bracketing it (the
    base has none, so next to it the one run's own)."""
    found = _segment(front, level)
    if found is None:
        return None
    a, b, t = found
    if a.probe is not None and b.probe is not None:
        return a.probe.blend(b.probe, t)
    return a.probe if a.probe is not None else b.probe


# --------------------------------------------------------------------------- from runs
def _num(value: object) -> float | None:
    if isinstance(value, int | float | np.integer | np.floating) \
            and not isinstance(value, bool) and math.isfinite(float(value)):
        return float(value)
    return None


def learning_of(flat: Mapping[str, Any], metric: str) -> dict[str, float | None]:
    """Learning of one run (its gain beyond held-out, else its plain target gain), that
    value's own paired interval and the trained facts scored; {} when not measured."""
    for stage in ("beyond_heldout", "delta"):
        value = _num(flat.get(score_key(stage, TARGET, metric)))
        if value is not None:
            return {"learning": value,
                    "learning_lo": _num(flat.get(ci_key("lo", stage, TARGET, metric))),
                    "learning_hi": _num(flat.get(ci_key("hi", stage, TARGET, metric))),
                    "learning_n": _num(flat.get(items_key(TARGET)))}
    return {}


def forgetting_of(flat: Mapping[str, Any], probe: str) -> dict[str, Any]:
    """Forgetting % of one run on ``probe`` (+ = worse) with its paired interval, flipped
    and swapped like the value, whether that excludes 0, and the items; {} when absent."""
    metric, higher = FORGETTING_METRICS[probe]
    value = _num(flat.get(score_key("rel_delta_pct", probe, metric)))
    if value is None:
        return {}
    lo = _num(flat.get(ci_key("lo", "rel_delta_pct", probe, metric)))
    hi = _num(flat.get(ci_key("hi", "rel_delta_pct", probe, metric)))
    if higher:
        value, lo, hi = -value, (None if hi is None else -hi), (None if lo is None else -lo)
    resolved = None if lo is None or hi is None else not lo <= 0 <= hi
    return {"forgetting": value, "forgetting_lo": lo, "forgetting_hi": hi,
            "forgetting_resolved": resolved, "probe_n": _num(flat.get(items_key(probe)))}


def measure_rows(flat: Mapping[str, Any], target_metric: object) -> list[dict[str, Any]]:
    """One row per forgetting probe a run (or a ``nested[N]`` state) measured: learning,
    forgetting and their paired intervals (:data:`INTERVAL_COLUMNS`)."""
    learning = learning_of(flat, target_metric) if isinstance(target_metric, str) else {}
    if not learning:
        return []
    return [{"probe": probe, **learning, **found} for probe in FORGETTING_METRICS
            if (found := forgetting_of(flat, probe))]


def draw_column(grid: pd.DataFrame) -> str:
    """The column that tells replicates apart: ``draw`` (seed + fact draw), else ``seed``."""
    return "draw" if "draw" in grid else "seed"


def grid_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (line, grid point, probe, draw) of ok runs: learning, forgetting and each
    run's own paired intervals (NaN / None for runs that predate them)."""
    columns = ["line", "point", "probe", "seed", "draw", "learning", "forgetting",
               *INTERVAL_COLUMNS]
    ok = df[df["status"] == "ok"] if "status" in df else df
    rows = []
    for _, run in ok.iterrows():
        labels = {"line": line_label(run["method"], run.get("selector"), run.get("variant")),
                  "point": grid_point(run.get("overrides")), "seed": run.get("seed"),
                  "draw": run_draw(run)}
        rows += [{**labels, **row} for row in measure_rows(run, run.get("target_metric"))]
    return pd.DataFrame(rows, columns=columns)


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


def _point(row: Any) -> Point:
    """A grid row as a frontier point with its own paired interval (when it has one)."""
    probe = ProbeCI.around(row.forgetting, getattr(row, "forgetting_lo", None),
                           getattr(row, "forgetting_hi", None))
    return Point(row.learning, row.forgetting, probe)


def _best_point(rows: pd.DataFrame) -> Point:
    """A draw's most-learning grid point (the least forgetting among equals)."""
    best = rows.sort_values(["learning", "forgetting"], ascending=[False, True]).iloc[0]
    return Point(float(best["learning"]), float(best["forgetting"]))


MATCHED_COLUMNS = ["line", "probe", "level", "forgetting", "std", "ci", "draws", "of",
                   "probe_below", "probe_above", "best_learning", "best_forgetting", "per_draw"]


def matched_learning(grid: pd.DataFrame, levels: Sequence[float] = LEVELS) -> pd.DataFrame:
    """Forgetting of every line at each learning level: per draw along that draw's own
    frontier, then mean, std and 95% CI over the draws that reach the level (never the
    frontier of the means, which would hide how much the draws disagree).

    ``probe_below`` / ``probe_above``: the probe's typical paired interval there (offsets
    from the value, median over those draws); ``best_learning`` / ``best_forgetting``: the
    line's most-learning point, mean over draws (what a line short of a level reaches);
    ``per_draw``: {draw: forgetting} at the level, to pair lines that ran the same draws."""
    rows = []
    draw = draw_column(grid)
    for (line, probe), block in grid.groupby(["line", "probe"], sort=False):
        keyed = [(str(key), rows_) for key, rows_ in block.groupby(draw, dropna=False)]
        draws = [d for _, d in keyed]
        fronts = [frontier(_point(r) for r in d.itertuples()) for d in draws]
        bests = [_best_point(d) for d in draws]
        for level in levels:
            found = [(key, v, f) for (key, _), f in zip(keyed, fronts, strict=True)
                     if (v := forgetting_at(f, level)) is not None]
            at = {key: v for key, v, _ in found}
            used = [(v, f) for _, v, f in found]
            values = [v for v, _ in used]
            ci = mean_ci(values)
            probe_ci = typical_probe_ci(probe_at(f, level) for _, f in used)
            rows.append({"line": line, "probe": probe, "level": level,
                         "forgetting": ci.mean if values else None,
                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                         "ci": ci.half if ci.has_interval else None,
                         "draws": len(values), "of": len(fronts),
                         "probe_below": probe_ci.below if probe_ci else None,
                         "probe_above": probe_ci.above if probe_ci else None,
                         "best_learning": float(np.mean([p.learning for p in bests])),
                         "best_forgetting": float(np.mean([p.forgetting for p in bests])),
                         "per_draw": at})
    return pd.DataFrame(rows, columns=MATCHED_COLUMNS)


# --------------------------------------------------------------------------- levels
@dataclass(frozen=True)
class Levels:
    """The learning levels a matched table compares at, and what differs from the standard
    ones (empty: every SMF-baseline pair reaches 25%)."""

    values: tuple[float, ...]
    note: str = ""


def line_reach(grid: pd.DataFrame) -> dict[str, float]:
    """Per line, the most learning every one of its draws reaches (min over draws of each
    draw's best point)."""
    if grid.empty:
        return {}
    best = grid.groupby(["line", draw_column(grid)], dropna=False)["learning"].max()
    return {str(k): float(v) for k, v in best.groupby(level=0).min().items()}


def pair_reach(reach: Mapping[str, float]) -> dict[tuple[str, str], float]:
    """(SMF line, baseline) -> the most learning both reach in every draw; each line on its
    own when the grid has no SMF line or no baseline."""
    smf = [ln for ln in reach if ln.startswith("smf")]
    pairs = [(a, b) for a in smf for b in reach if is_baseline(b)]
    if not pairs:
        return {(ln, ln): r for ln, r in reach.items()}
    return {(a, b): min(reach[a], reach[b]) for a, b in pairs}


def pair_levels(reach: float, standard: Sequence[float] = LEVELS,
                step: float = 0.05) -> tuple[float, ...]:
    """The ``standard`` levels up to ``reach`` when it reaches the first; else steps of
    ``step`` (1 point below 5%) up to it: the levels one pair compares at."""
    if reach >= standard[0]:
        return tuple(v for v in standard if v <= reach)
    step = step if reach >= step else 0.01
    return tuple(round(step * k, 6) for k in range(1, math.floor(reach / step + 1e-9) + 1))


def pct(share: float) -> str:
    return f"{100 * share:.3g}%"


def _pair_text(pair: tuple[str, str], reach: Mapping[str, float],
               values: Sequence[float]) -> str:
    a, b = pair
    weaker = min(pair, key=lambda ln: (reach[ln], ln))
    name = a if a == b else f"{a} vs {b}"
    at = ", ".join(pct(v) for v in values) if values else "no level"
    return f"{name} at {at} ({weaker} reaches {pct(reach[weaker])} in its weakest draw)"


def choose_levels(grid: pd.DataFrame, standard: Sequence[float] = LEVELS,
                  step: float = 0.05) -> Levels:
    """The union of every SMF-baseline pair's levels (:func:`pair_levels` of what both
    reach), so each pair compares as far as it can; the note names the pairs below
    ``standard[0]``."""
    reach = line_reach(grid)
    pairs = pair_reach(reach)
    per_pair = {pair: pair_levels(r, standard, step) for pair, r in pairs.items()}
    values = tuple(sorted({v for vs in per_pair.values() for v in vs}))
    low = [pair for pair, r in pairs.items() if r < standard[0]]
    note = "; ".join(_pair_text(p, reach, per_pair[p]) for p in
                     sorted(low, key=lambda p: (line_order(p[0]), line_order(p[1]))))
    if note:
        note = f"Below {pct(standard[0])} learned: {note}."
    return Levels(values or tuple(standard), note)


# --------------------------------------------------------------------------- the table
def is_missing(value: object) -> bool:
    return value is None or bool(pd.isna(value))


def level_ci(at: pd.DataFrame, line: str) -> MeanCI:
    """``line``'s forgetting at one level (rows of :func:`matched_learning` by line)."""
    row = at.loc[line]
    if is_missing(row["forgetting"]):
        return MeanCI(math.nan, math.nan, 0)
    half = row["ci"]
    return MeanCI(float(row["forgetting"]), math.nan if is_missing(half) else float(half),
                  int(row["draws"]))


def probe_ci_of(row: pd.Series) -> ProbeCI | None:
    """The probe's own paired interval of a matched row; None for runs without one."""
    below, above = row.get("probe_below"), row.get("probe_above")
    if is_missing(below) or is_missing(above):
        return None
    return ProbeCI(float(below), float(above))


def matched_cell(row: pd.Series, probe: bool = True) -> str:
    """A matched row as ``+0.88% ± 1.6 (n=3; probe ± 0.4)``, or how far a short line got;
    ``probe=False`` leaves the paired interval to a column of its own."""
    if is_missing(row["forgetting"]):
        if is_missing(row.get("best_learning")):
            return "not reached"
        return (f"reaches at most {pct(row['best_learning'])} "
                f"(forgetting {row['best_forgetting']:+.2f}%)")
    half = math.nan if is_missing(row["ci"]) else float(row["ci"])
    ci = MeanCI(float(row["forgetting"]), half, int(row["draws"]))
    return fmt_ci(ci, signed=True, digits=".2f", unit="%", of=int(row["of"]),
                  probe=probe_ci_of(row) if probe else None)


def ratio_text(mine: MeanCI, ref: MeanCI) -> str:
    """SMF's forgetting over the baseline's (``0.10x``); both values when the baseline's is
    not positive, where a ratio says nothing."""
    return f"{mine.mean / ref.mean:.2f}x" if ref.mean > 0 else \
        f"{mine.mean:+.2f} vs {ref.mean:+.2f}"


def best_baseline(at: pd.DataFrame, baselines: Sequence[str]) -> tuple[str, MeanCI] | None:
    """The baseline forgetting least among those some draw of which reaches the level."""
    reached = [(b, ci) for b in baselines if b in at.index and (ci := level_ci(at, b)).n > 0]
    return min(reached, key=lambda kv: kv[1].mean) if reached else None


def _versus(at: pd.DataFrame, line: str, baselines: Sequence[str]) -> list[str]:
    """``0.25x (full)`` and ``overlap`` / ``separate`` of ``line`` against the best baseline
    that reaches the level; ``-`` when either is missing."""
    mine = level_ci(at, line) if line in at.index else MeanCI(math.nan, math.nan, 0)
    best = best_baseline(at, baselines)
    if best is None or mine.n == 0:
        return ["-", "-"]
    name, ref = best
    return [f"{ratio_text(mine, ref)} ({name})", overlap_text(mine, ref)]


def comparison_table(block: pd.DataFrame, lead: str | None = None) -> str:
    """One probe's matched table: a row per level of ``block`` (from :func:`matched_learning`),
    a column per line, and per SMF line its ratio to the best baseline reaching that level
    and whether their 95% intervals overlap. ``lead``: a column of ``block`` (e.g.
    ``facts``, the stream length) whose values split the rows, each with its own levels."""
    lines = sorted(block["line"].unique(), key=line_order)
    baselines = [ln for ln in lines if is_baseline(ln)]
    smf_lines = [ln for ln in lines if ln.startswith("smf")] if baselines else []
    header = [*([lead] if lead else []), "learned", *lines]
    for ln in smf_lines:
        header += [f"{ln} / best baseline", f"{ln} vs best baseline: 95% CIs"]
    groups = block.groupby(lead, sort=True) if lead else [(None, block)]
    rows = []
    for value, sub in groups:
        for level in sorted(sub["level"].unique()):
            at = sub[sub["level"] == level].set_index("line")
            cells = [*([str(value)] if lead else []), pct(level),
                     *(matched_cell(at.loc[ln]) if ln in at.index else "not run" for ln in lines)]
            for ln in smf_lines:
                cells += _versus(at, ln, baselines)
            rows.append(cells)
    return md_table(header, rows)


MATCHED_NOTE = (
    "Learning = share of the trained facts learned beyond the held-out questions; "
    "forgetting = the probe's relative change, + = worse. SMF is compared with each baseline "
    "up to the most learning both reach in every draw: at 25 / 50 / 75% where both reach "
    "them, else at steps of 5 points (1 below 5%) up to it. Interpolated along each draw's "
    "frontier over its method's grid, then mean ± 95% t-interval half-width over the draws "
    "that reach the level (n; `n=k of m draws`: only k of m reach it). `reaches at most X% "
    "(forgetting Y%)`: no draw of that line reaches the level; X and Y are its most-learning "
    "grid point, mean over draws. Best baseline = the LoRA / full finetuning line forgetting "
    "least among those reaching the level (named); `overlap` / `separate`: whether its "
    "interval and SMF's overlap (`n<2`: one of them has no interval).")
PROBE_NOTE = (
    "`probe ± h`: the probe's own noise (its items, after vs before on the same ones): the "
    "paired 95% interval of each draw at the runs bracketing the level, interpolated, median "
    "over the draws used.")


def grid_items_note(grid: pd.DataFrame) -> str:
    """The items behind the grid's numbers: per forgetting probe and for learning."""
    counts: dict[str, Iterable[float]] = {}
    if "probe_n" in grid:
        counts = {str(p): b["probe_n"] for p, b in grid.groupby("probe", sort=False)}
    if "learning_n" in grid:
        counts[TARGET] = grid["learning_n"]
    return items_note(counts)


def has_probe_intervals(table: pd.DataFrame) -> bool:
    """Whether any matched cell carries a paired interval (older runs: none)."""
    return "probe_below" in table and bool(table["probe_below"].notna().any())


def matched_notes(table: pd.DataFrame, grid: pd.DataFrame) -> list[str]:
    """The legend lines a matched section needs: items per probe, the paired intervals."""
    notes = [n for n in (grid_items_note(grid),) if n]
    if has_probe_intervals(table):
        notes += [PROBE_NOTE, UNRESOLVED_NOTE]
    return notes


def matched_markdown(grid: pd.DataFrame, levels: Sequence[float] | None = None,
                     note: str = "") -> str:
    """One table per probe: forgetting at each learning level, SMF's ratio to the best
    baseline reaching it and whether their intervals overlap. ``levels=None``:
    :func:`choose_levels`; ``note``: what the grid is, said above the tables."""
    if grid.empty:
        return ""
    chosen = choose_levels(grid) if levels is None else Levels(tuple(levels))
    table = matched_learning(grid, chosen.values)
    parts = ["### Forgetting at matched learning\n", MATCHED_NOTE + "\n",
             *(n + "\n" for n in matched_notes(table, grid))]
    if note:
        parts.append(note + "\n")
    if chosen.note:
        parts.append(chosen.note + "\n")
    for probe, block in table.groupby("probe", sort=False):
        metric = FORGETTING_METRICS[probe][0]
        parts.append(f"**{probe}** ({metric}, % change)\n\n{comparison_table(block)}\n")
    return "\n".join(parts) + "\n"


def point_keys(points: pd.DataFrame, lines: Sequence[str]) -> dict[tuple[str, str], str]:
    """(line, point) -> its short key on the figure (``1``, ``2``, ... per line, by point)."""
    return {(line, point): str(k) for line in lines
            for k, point in enumerate(sorted(points.loc[points["line"] == line, "point"]
                                             .astype(str).unique()), 1)}


def key_legend(fig: Figure, keys: Mapping[tuple[str, str], str]) -> None:
    """What each point's number stands for: its own overrides (those every point of its line
    shares said once), outside the panels, under the lines' legend."""
    entries = []
    for line in dict.fromkeys(line for line, _ in keys):
        points = [p for ln, p in keys if ln == line]
        shared, labels = point_labels(points)
        entries.append(f"{line}" + (f" ({shared})" if shared else "") + ":")
        entries += [f"  {keys[(line, p)]}: {labels[p]}" for p in points]
    handles = [Line2D([], [], ls="none") for _ in entries]
    fig.legend(handles, entries, loc="outside right lower", fontsize=6, handlelength=0,
               handletextpad=0, frameon=False, title="grid points", title_fontsize=7,
               alignment="left")


def _label_points(ax: Axes, mine: pd.DataFrame, color: str,
                  keys: Mapping[tuple[str, str], str]) -> None:
    """Each grid point's number beside its marker (kept out of the layout)."""
    for r in mine.itertuples():
        text = ax.annotate(keys[(str(r.line), str(r.point))], (100 * r.learning, r.forgetting),
                           fontsize=6, color=color, xytext=(3, 3), textcoords="offset points",
                           annotation_clip=True)
        text.set_in_layout(False)


def _frontier_panel(ax: Axes, block: pd.DataFrame, lines: Sequence[str],
                    colors: Mapping[str, str], keys: Mapping[tuple[str, str], str]) -> None:
    """One probe: every line's grid points (mean ± 95% CI over draws, numbered) and its
    frontier from the base at the origin."""
    for line in lines:
        mine = block[block["line"] == line]
        if mine.empty:
            continue
        ax.errorbar(100 * mine["learning"], mine["forgetting"],
                    xerr=100 * mine["learning_ci"].fillna(0),
                    yerr=mine["forgetting_ci"].fillna(0), fmt="o", ms=4, alpha=0.55,
                    color=colors[line], elinewidth=0.8)
        _label_points(ax, mine, colors[line], keys)
        front = frontier(Point(r.learning, r.forgetting) for r in mine.itertuples())
        if front[0] != Point(0.0, 0.0):  # a point learns more *and* forgets less than
            front = [Point(0.0, 0.0), *front]  # the base: the line still starts there
        ax.plot([100 * p.learning for p in front], [p.forgetting for p in front], "-",
                color=colors[line], label=line, lw=1.6)
    ax.scatter([0], [0], marker="*", s=90, color="black", zorder=5, label="base")
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.grid(alpha=0.25)


def line_rows(lines: Sequence[str], limit: int = MAX_LINES) -> list[list[str]]:
    """Lines split into panels of at most ``limit``: every panel keeps the baselines, so
    each SMF line is seen next to them."""
    baselines = [ln for ln in lines if is_baseline(ln)]
    others = [ln for ln in lines if not is_baseline(ln)]
    if len(lines) <= limit or not others:
        return [list(lines)]
    room = max(1, limit - len(baselines))
    return [[*part, *baselines] for part in balanced_chunks(others, room)]


def frontier_figure(grid: pd.DataFrame) -> Figure:
    """One panel per probe: x = learning (% of facts), y = forgetting; grid points (mean ±
    95% CI over draws, numbered, the numbers' overrides beside the panels) and each method's
    frontier from the base at the origin; more than six lines: a row per six (the baselines
    in each)."""
    points = mean_points(grid)
    probes = list(dict.fromkeys(points["probe"])) if not points.empty else []
    if not probes:
        return empty_figure("no run measured learning and forgetting")
    lines = sorted(points["line"].unique(), key=line_order)
    colors = {ln: f"C{i % 10}" for i, ln in enumerate(lines)}
    rows = line_rows(lines)
    keys = point_keys(points, lines)
    fig = new_figure(4.6 * len(probes) + 2.4, max(3.8 * len(rows), 1.2 + 0.13 * len(keys)))
    axes = fig.subplots(len(rows), len(probes), squeeze=False)
    for r, row in enumerate(rows):
        for c, probe in enumerate(probes):
            ax = axes[r][c]
            _frontier_panel(ax, points[points["probe"] == probe], row, colors, keys)
            metric = FORGETTING_METRICS[probe][0]
            ax.set_xlabel("facts learned beyond held-out (%)")
            ax.set_ylabel(f"forgetting on {probe}: {metric} change (%)\n(↑ more forgetting)")
            ax.set_title(probe)
    figure_legend(fig, axes.ravel())
    key_legend(fig, keys)
    return fig
