"""Matplotlib (Agg, no pyplot state) figures and what they share: the gain-vs-forgetting
Pareto view, training curves, and the faceted curve grid every along-the-run figure uses.

Both axes of the Pareto view are signed so the ideal corner is the same for every probe:
up = more target gain, right = more forgetting. The base model sits at the origin.

A panel draws at most :data:`MAX_LINES` curves, since more cannot be told apart: a method with
more grid points gets several rows (facets), each with its legend outside the axes, titled
by the method and the overrides its points share, each curve labelled by its own overrides.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smfexp.reporting.collect import NO_SELECTOR, TARGET, load_training_log, score_key
from smfexp.reporting.stats import ci_half
from smfexp.reporting.tables import (
    CONTEXT_KEYS,
    METHOD_ORDER,
    SELECTOR_ORDER,
    Column,
    display_columns,
    rank,
    std,
)
from smfexp.utils.io import atomic_file

MARKERS = {NO_SELECTOR: "o", "tfidf": "^", "kl": "s", "random": "D", "all": "v"}
MAX_LINES = 6  # curves per panel
LEGEND_FONT = 7


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Render to a temp file beside ``path`` and rename: readers never see half a PNG."""
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def group_label(method: str, selector: str, context: Sequence[str] = ()) -> str:
    name = method if selector in (NO_SELECTOR, "", None) else f"{method}/{selector}"
    return f"{name} [{', '.join(context)}]" if context else name


def line_label(method: str, selector: object, variant: object = None) -> str:
    """A method line's name: ``smf/tfidf``, ``lora``, ``full+replay`` (levers against
    forgetting, ``variant``, make a line of their own)."""
    name = group_label(str(method), str(selector) if selector else NO_SELECTOR)
    return f"{name}+{variant}" if isinstance(variant, str) and variant else name


def line_order(label: str) -> tuple:
    """Sort key of line names: SMF (by selector), LoRA, full, then unknown ones; a line's
    variants (``full+replay``) right after it."""
    base, _, variant = label.partition("+")
    method, _, selector = base.partition("/")
    return (rank(method, METHOD_ORDER), rank(selector or NO_SELECTOR, SELECTOR_ORDER),
            variant, label)


def legend_outside(ax: Axes, title: str | None = None,
                   handles: Sequence[Any] | None = None,
                   labels: Sequence[str] | None = None) -> None:
    """The legend to the right of ``ax``, never over the data (constrained layout makes
    room for it); nothing when there is nothing labelled."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0,
              fontsize=LEGEND_FONT, title=title, title_fontsize=LEGEND_FONT, frameon=False,
              alignment="left")


def _handles(axes: Iterable[Axes]) -> dict[str, Any]:
    """label -> handle over ``axes``, every label once, in first-seen order."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    return seen


def row_legend(axes: Sequence[Axes], title: str | None = None) -> None:
    """One legend for a row of panels (every label once), outside its last panel."""
    seen = _handles(axes)
    legend_outside(axes[-1], title, list(seen.values()), list(seen))


def figure_legend(fig: Figure, axes: Iterable[Axes], title: str | None = None) -> None:
    """One legend for panels that share their lines, outside them on the right."""
    seen = _handles(axes)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside right upper",
                   fontsize=LEGEND_FONT + 1, title=title, frameon=False)


# --------------------------------------------------------------------------- facets
@dataclass(frozen=True)
class Facet:
    """One row of a curve grid: a method line and at most :data:`MAX_LINES` of its grid
    points, each with the label that tells it from the others."""

    line: str
    points: tuple[str, ...]
    labels: Mapping[str, str]
    title: str

    def color(self, point: str) -> str:
        return f"C{self.points.index(point) % 10}"


def point_labels(points: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The overrides every point shares (said once) and each point's own (its label)."""
    tokens = {p: p.split() for p in points}
    common = set.intersection(*(set(t) for t in tokens.values())) if len(points) > 1 else set()
    shared = " ".join(t for t in tokens[points[0]] if t in common) if points else ""
    return shared, {p: " ".join(t for t in tokens[p] if t not in common) or "defaults"
                    for p in points}


def balanced_chunks(items: Sequence[Any], limit: int = MAX_LINES) -> list[list[Any]]:
    """``items`` in consecutive chunks of at most ``limit``, as even as possible."""
    count = max(1, math.ceil(len(items) / limit))
    size = math.ceil(len(items) / count) if items else 0
    return [list(items[i:i + size]) for i in range(0, len(items), size)] if items else []


def facets(points_by_line: Mapping[str, Iterable[str]], limit: int = MAX_LINES) -> list[Facet]:
    """Rows of a curve grid: each line in :func:`line_order`, its points sorted and split into
    rows of at most ``limit``."""
    rows = []
    for line in sorted(points_by_line, key=line_order):
        points = sorted(set(points_by_line[line]))
        shared, labels = point_labels(points)
        parts = balanced_chunks(points, limit)
        for i, part in enumerate(parts, 1):
            title = line + (f" ({i} of {len(parts)})" if len(parts) > 1 else "")
            if shared:
                title += "\n" + "\n".join(textwrap.wrap(shared, 40))
            rows.append(Facet(line, tuple(part), {p: labels[p] for p in part}, title))
    return rows


def facets_of(*longs: pd.DataFrame, limit: int = MAX_LINES) -> list[Facet]:
    """:func:`facets` of the (line, point) pairs the long tables hold."""
    found: dict[str, set[str]] = {}
    for long in longs:
        if not long.empty:
            for line, point in long[["line", "point"]].drop_duplicates().itertuples(index=False):
                found.setdefault(str(line), set()).add(str(point))
    return facets(found, limit)


# --------------------------------------------------------------------------- curve grids
@dataclass(frozen=True)
class Panel:
    """One column of a curve grid: the ``probe`` / ``metric`` rows of the long tables."""

    probe: str
    metric: str
    title: str
    ylabel: str


def curve_means(long: pd.DataFrame, keys: Sequence[str] = ("line", "point", "facts"),
                ) -> pd.DataFrame:
    """Mean and 95% CI half-width (``ci``) of ``value`` over draws per ``keys``, by ``keys``."""
    if long.empty:
        return pd.DataFrame(columns=[*keys, "value", "ci", "n"])
    agg = long.groupby(list(keys), sort=False, dropna=False).agg(
        value=("value", "mean"), ci=("value", ci_half), n=("value", "size"))
    return agg.reset_index().sort_values(list(keys), kind="stable", ignore_index=True)


def _select(long: pd.DataFrame, panel: Panel, line: str) -> pd.DataFrame:
    if long.empty:
        return long
    return long[(long["probe"] == panel.probe) & (long["metric"] == panel.metric)
                & (long["line"] == line)]


def draw_curves(ax: Axes, curves: pd.DataFrame, marks: pd.DataFrame, facet: Facet,
                band: bool = True) -> None:
    """One labelled curve per grid point of ``facet`` (mean over draws, 95% CI shaded unless
    ``band`` is off) and its marks (e.g. the nested N: mean ± CI squares), joined by a line
    when it has no curve."""
    curves, marks = curve_means(curves), curve_means(marks)
    for point in facet.points:
        color, label = facet.color(point), facet.labels[point]
        curve = curves[curves["point"] == point] if not curves.empty else curves
        if not curve.empty:
            ax.plot(curve["facts"], curve["value"], "-", color=color, lw=1.3, label=label)
            spread = curve["ci"].astype(float).fillna(0)
            if band and (spread > 0).any():
                ax.fill_between(curve["facts"].astype(float), curve["value"] - spread,
                                curve["value"] + spread, color=color, alpha=0.12, lw=0)
        dot = marks[marks["point"] == point] if not marks.empty else marks
        if not dot.empty:
            ax.errorbar(dot["facts"], dot["value"], yerr=dot["ci"].astype(float).fillna(0),
                        fmt="s" if not curve.empty else "s-", lw=0.9, ms=4, capsize=2,
                        color=color, label=None if not curve.empty else label)


Extra = tuple[str, Callable[[Axes, Facet], None]]  # a last column: title, how to draw it


def facet_axes(rows: int, columns: int, share_y: bool = True, width: float = 3.3,
               height: float = 2.5) -> tuple[Figure, np.ndarray]:
    """A rows x columns grid sharing each column's x (and y, so rows compare), with room
    right for the legends."""
    fig = new_figure(width * columns + 2.8, height * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False, sharex="col",
                        sharey="col" if share_y else False)
    return fig, axes


def curve_grid(curves: pd.DataFrame, marks: pd.DataFrame, panels: Sequence[Panel],
               xlabel: str, extra: Sequence[Extra] = (), empty: str = "no curves",
               band: bool = True, share_y: bool = True) -> Figure:
    """Rows = :func:`facets_of` the curves and marks, columns = ``panels`` (then ``extra``);
    each row's legend (titled by its facet) outside its last panel. ``band``: the 95% CI
    over draws shaded; ``share_y``: one y scale per column."""
    rows = facets_of(curves, marks)
    if not rows or not (panels or extra):
        return empty_figure(empty)
    fig, axes = facet_axes(len(rows), len(panels) + len(extra), share_y)
    for r, facet in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            draw_curves(ax, _select(curves, panel, facet.line), _select(marks, panel, facet.line),
                        facet, band)
            ax.set_ylabel(panel.ylabel, fontsize=8)
            ax.set_title(panel.title if r == 0 else "", fontsize=9)
            ax.grid(alpha=0.25)
        for c, (title, draw) in enumerate(extra, len(panels)):
            draw(axes[r][c], facet)
            axes[r][c].set_title(title if r == 0 else "", fontsize=9)
            if r < len(rows) - 1:
                axes[r][c].set_xlabel("")  # said once, under the last row
            axes[r][c].grid(alpha=0.25)
        row_legend(list(axes[r]), facet.title)
    for ax in axes[-1][:len(panels)]:
        ax.set_xlabel(xlabel)
    return fig


def open_markers(ax: Axes, x: Any, y: Any, color: str) -> None:
    """Hollow markers over points that not every draw reaches (a mean of fewer draws)."""
    ax.scatter(x, y, s=30, facecolors="white", edgecolors=color, linewidths=1.2, zorder=4)


PARTIAL_NOTE = "open marker: not every draw reaches it"


def empty_figure(text: str, width: float = 6.0, height: float = 3.0) -> Figure:
    """A figure that says why it has nothing to draw."""
    fig = new_figure(width, height)
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return fig


def _varying_context(df: pd.DataFrame) -> list[str]:
    return [k for k in CONTEXT_KEYS if k in df and df[k].nunique() > 1]


def _labels(df: pd.DataFrame, context: Sequence[str]) -> dict[tuple, str]:
    """Group key -> legend label, in table order (smf selectors, lora, full)."""
    keys = {(*(str(r[k]) for k in context), r["method"], r["selector"])
            for _, r in df.iterrows()}
    ordered = sorted(keys, key=lambda k: (k[:-2], rank(k[-2], METHOD_ORDER),
                                          rank(k[-1], SELECTOR_ORDER)))
    return {k: group_label(k[-2], k[-1], k[:-2]) for k in ordered}


def group_colors(df: pd.DataFrame) -> dict[str, str]:
    """The same colour for a method/selector in every figure of one report."""
    labels = _labels(df, _varying_context(df)).values()
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _signed(values: pd.Series, higher_better: pd.Series | bool, gain: bool) -> pd.Series:
    """Gain: + when the metric improved. Forgetting: + when it got worse."""
    sign = np.where(pd.Series(higher_better, index=values.index).astype(bool), 1.0, -1.0)
    return values * (sign if gain else -sign)


def _target_gain(ok: pd.DataFrame) -> pd.Series:
    gain = pd.Series(np.nan, index=ok.index)
    for metric in ok["target_metric"].dropna().unique():
        col = score_key("delta", TARGET, str(metric))
        if col not in ok:
            continue
        rows = ok["target_metric"] == metric
        hib = ok.loc[rows, "target_higher_is_better"].map(lambda v: True if v is None else v)
        gain[rows] = _signed(ok.loc[rows, col], hib, gain=True)
    return gain


def _axis_text(col: Column, gain: bool) -> str:
    up = col.higher_is_better if gain else not col.higher_is_better
    sign = "+" if up else "−"
    if gain:
        return f"target gain: {sign}Δ{col.metric}\n(↑ better)"
    return f"forgetting on {col.probe}: {sign}Δ{col.metric}\n(→ more forgetting)"


def pareto_figure(df: pd.DataFrame) -> Figure:
    """One subplot per probe: x = forgetting, y = target gain; mean ± std over seeds per group."""
    ok = df[df["status"] == "ok"] if len(df) else df
    columns = display_columns(df) if len(ok) else []
    probes = [c for c in columns if c.probe != TARGET]
    targets = [c for c in columns if c.probe == TARGET]
    n = max(len(probes), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = new_figure(4.6 * ncols, 3.9 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    if not probes or ok.empty or "target_metric" not in ok:
        axes[0].text(0.5, 0.5, "no successful runs with probe deltas", ha="center",
                     va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
        return fig
    gain = _target_gain(ok)
    context = _varying_context(df)
    colors = group_colors(df)
    labels = _labels(ok, context)
    by_key = {tuple(str(v) for v in k): g
              for k, g in ok.groupby([*context, "method", "selector"], dropna=False)}
    groups = [(key, label, by_key[key]) for key, label in labels.items()]
    y_label = _axis_text(targets[0], gain=True) if len(targets) == 1 else (
        "target gain: Δ target primary metric\n(signed, ↑ better)")
    for ax, col in zip(axes, probes, strict=False):
        key = score_key("delta", col.probe, col.metric)
        ax.axhline(0, color="0.7", lw=0.8, zorder=0)
        ax.axvline(0, color="0.7", lw=0.8, zorder=0)
        ax.plot([0], [0], marker="*", ms=12, color="k", ls="none", label="base")
        for (*_, selector), label, grp in groups:
            if key not in grp:
                continue
            x = _signed(grp[key], col.higher_is_better, gain=False)
            y = gain.loc[grp.index]
            both = x.notna() & y.notna()
            if not both.any():
                continue
            ax.errorbar(x[both].mean(), y[both].mean(),
                        xerr=np.nan_to_num(std(x[both])), yerr=np.nan_to_num(std(y[both])),
                        marker=MARKERS.get(selector, "P"), ms=8, capsize=3, ls="none",
                        color=colors[label], label=f"{label} (n={len(grp)})")
        ax.set_title(col.probe)
        ax.set_xlabel(_axis_text(col, gain=False))
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    figure_legend(fig, axes[:n])
    fig.suptitle("Target gain vs forgetting (mean ± std over seeds; base model at origin)")
    missing = [label for key, label in _labels(df, context).items() if key not in by_key]
    if missing:
        fig.supxlabel(f"not plotted (no successful run): {', '.join(missing)}", fontsize=8)
    return fig




# --------------------------------------------------------------------------- training curves
def _smooth(values: pd.Series, steps: int) -> pd.Series:
    """Rolling mean over 2% of the run (a per-step loss is noise, its trend is the signal)."""
    return values.rolling(max(1, round(steps / 50)), min_periods=1).mean()


def training_points(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """line, point, draw, facts (the step), probe = metric = key, value: each ok run's logged
    ``keys``, smoothed (every run when none is ok, so a failing sweep still shows them)."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    rows = []
    for _, run in (ok if len(ok) else df).iterrows():
        run_dir = run.get("run_dir")
        log = load_training_log(run_dir) if isinstance(run_dir, str) and run_dir else None
        if log is None or "step" not in log:
            continue
        for key in (k for k in keys if k in log):
            curve = log[["step", key]].dropna().groupby("step", sort=True)[key].mean()
            if curve.empty:
                continue
            smooth = _smooth(curve, len(curve))
            rows += [{"line": line_label(run["method"], run.get("selector"), run.get("variant")),
                      "point": str(run.get("point") or "defaults"),
                      "draw": str(run.get("draw") or run.get("run_id")), "facts": step,
                      "probe": key, "metric": key, "value": float(v)}
                     for step, v in smooth.items()]
    return pd.DataFrame(rows, columns=["line", "point", "draw", "facts", "probe", "metric",
                                       "value"])


def training_curves_figure(df: pd.DataFrame, keys: Sequence[str] = ("train/loss", "train/lr"),
                           ) -> Figure:
    """Training curves from the runs' Lightning CSV logs: a row per method (and per six of
    its grid points), a column per key; smoothed, mean over draws, each row on its own
    scale (methods' learning rates differ by orders of magnitude)."""
    long = training_points(df, keys)
    present = [k for k in keys if not long.empty and (long["probe"] == k).any()]
    panels = [Panel(k, k, f"{k} (smoothed, mean over draws)", k) for k in present]
    return curve_grid(long, long.iloc[0:0], panels, "optimizer step",
                      empty="no Lightning CSV logs with train/* metrics\n"
                            "(<run dir>/csv/version_*/metrics.csv)", band=False, share_y=False)
