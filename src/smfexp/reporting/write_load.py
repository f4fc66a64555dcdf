"""Learning and forgetting against SMF's write load (``write_load.png``).

Why: the write load - distinct (fact, row) writes per slot, ``top_t x facts / slots`` when
every fact writes fresh rows - is what the table size and top_t trade against each other.
Runs of different sizes and budgets only compare on that axis: a 1M-slot run at top_t 1024
and a 262K-slot run at top_t 256 carry the same nominal load. Each SMF run contributes one
point per nested N (its state after the first N facts), so one sweep traces how learning and
forgetting grow with the load.
"""

from __future__ import annotations

from functools import partial

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from smfexp.reporting.frontier import FORGETTING_METRICS
from smfexp.reporting.plots import Extra, Facet, curve_grid, empty_figure, line_order

EMPTY = "no SMF run records its write load (results.json memory 'write_load', since 2026-12-06)"


def write_load_points(nested: pd.DataFrame, memory: pd.DataFrame) -> pd.DataFrame:
    """One row per (line, point, facts, probe): the mean over draws of the write load,
    learning and forgetting after the first N facts, for the runs that recorded the load
    (``nested``: :func:`~smfexp.reporting.scale.nested_grid`, ``memory``:
    :func:`~smfexp.reporting.scale.memory_points`)."""
    columns = ["line", "point", "facts", "probe", "write_load", "learning", "forgetting", "n"]
    keys = ["line", "point", "draw", "facts"]
    load = memory[memory["key"] == "write_load"][[*keys, "value"]] \
        .rename(columns={"value": "write_load"})
    if load.empty or nested.empty:
        return pd.DataFrame(columns=columns)
    joined = nested.merge(load, on=keys, how="inner").dropna(
        subset=["write_load", "learning", "forgetting"])
    if joined.empty:
        return pd.DataFrame(columns=columns)
    means = joined.groupby(["line", "point", "facts", "probe"], sort=False).agg(
        write_load=("write_load", "mean"), learning=("learning", "mean"),
        forgetting=("forgetting", "mean"), n=("draw", "nunique")).reset_index()
    order = means["line"].map(line_order)
    return means.assign(_o=order).sort_values(["_o", "point", "probe", "facts"]) \
        .drop(columns="_o").reset_index(drop=True)[columns]


def write_load_figure(points: pd.DataFrame) -> Figure:
    """Learning (first column) and each forgetting probe against the write load (log x): a
    row per SMF line (at most :data:`~smfexp.reporting.plots.MAX_LINES` grid points each, so
    every curve in a row has its own colour), a curve per grid point through its nested N
    (N beside each marker), mean over draws; each row's legend names what its points change."""
    if points.empty:
        return empty_figure(EMPTY)
    probes = [p for p in FORGETTING_METRICS if p in set(points["probe"])]
    learning = points.drop_duplicates(["line", "point", "facts"])
    columns: list[Extra] = [("learning", partial(
        _draw_loads, learning, "learning", "learning beyond held-out\n(target gain, ↑ learned)"))]
    columns += [(probe, partial(
        _draw_loads, points[points["probe"] == probe], "forgetting",
        f"{FORGETTING_METRICS[probe][0]} change (%)\n(↑ more forgetting)"))
        for probe in probes]
    return curve_grid(points, points.iloc[0:0], (), "", extra=columns, empty=EMPTY)


def _draw_loads(block: pd.DataFrame, value: str, ylabel: str, ax: Axes, facet: Facet) -> None:
    """One curve per grid point of ``facet``: ``value`` against the write load, N annotated."""
    mine_line = block[block["line"] == facet.line]
    for point in facet.points:
        mine = mine_line[mine_line["point"] == point].sort_values("facts")
        if mine.empty:
            continue
        color = facet.color(point)
        ax.plot(mine["write_load"], mine[value].astype(float), "o-", color=color, lw=1.3,
                ms=4, label=facet.labels[point])
        for row in mine.itertuples():
            ax.annotate(str(row.facts), (row.write_load, getattr(row, value)),
                        textcoords="offset points", xytext=(3, 3), fontsize=6, color=color)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xlabel("write load (distinct writes per slot)")


def write_load_markdown(points: pd.DataFrame) -> str:
    """A short section naming the figure and the loads it spans; empty without points."""
    if points.empty:
        return ""
    low, high = points["write_load"].min(), points["write_load"].max()
    return ("### Learning and forgetting against the write load\n\n"
            f"Write loads {low:.2f}-{high:.2f} distinct writes per slot (mean over layers "
            "and draws); each SMF grid point is a curve through its nested N. Figure: "
            "`write_load.png`.\n\n")


__all__ = ["write_load_figure", "write_load_markdown", "write_load_points"]
