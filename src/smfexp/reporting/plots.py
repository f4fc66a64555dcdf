"""Matplotlib (Agg, no pyplot state) figures: the gain-vs-forgetting Pareto view and loss curves.

Both axes of the Pareto view are signed so the ideal corner is the same for every probe:
up = more target gain, right = more forgetting. The base model sits at the origin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from smfexp.reporting.collect import NO_SELECTOR, TARGET, load_training_log, score_key
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
                        color=colors[label], label=f"{label} (n={int(both.sum())})")
        ax.set_title(col.probe)
        ax.set_xlabel(_axis_text(col, gain=False))
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Target gain vs forgetting (mean ± std over seeds; base model at origin)")
    missing = [label for key, label in _labels(df, context).items() if key not in by_key]
    if missing:
        fig.supxlabel(f"not plotted (no successful run): {', '.join(missing)}", fontsize=8)
    return fig


def training_curves_figure(df: pd.DataFrame, keys: Sequence[str] = ("train/loss", "train/lr"),
                           ) -> Figure:
    """Training curves from each run's Lightning CSV log, one colour per method/selector."""
    logs = []
    for _, run in df.iterrows():
        run_dir = run.get("run_dir")
        log = load_training_log(run_dir) if isinstance(run_dir, str) and run_dir else None
        if log is not None and "step" in log:
            logs.append((run, log))
    present = [k for k in keys if any(k in log and log[k].notna().any() for _, log in logs)]
    fig = new_figure(5.5 * max(len(present), 1), 4.2)
    axes = fig.subplots(1, max(len(present), 1), squeeze=False).ravel()
    if not present:
        axes[0].text(0.5, 0.5, "no Lightning CSV logs with train/* metrics\n"
                     "(<run dir>/csv/version_*/metrics.csv)", ha="center", va="center",
                     transform=axes[0].transAxes)
        axes[0].set_axis_off()
        return fig
    context = _varying_context(df)
    colors = group_colors(df)
    for ax, key in zip(axes, present, strict=True):
        seen: set[str] = set()
        for run, log in logs:
            if key not in log:
                continue
            curve = log[["step", key]].dropna()
            if curve.empty:
                continue
            label = group_label(run["method"], run["selector"], [str(run[k]) for k in context])
            failed = run.get("status") != "ok"
            ax.plot(curve["step"], curve[key], color=colors[label], lw=1.2, alpha=0.8,
                    ls="--" if failed else "-",
                    label=None if label in seen else label)
            seen.add(label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} (one line per run; dashed = not ok)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig
