"""The scale report: how forgetting grows with the stream, what SMF's memory fills, and how
much of the earlier facts survives to the end of the stream.

Every part reads optional fields of results.json, so old runs simply contribute nothing:

- ``nested``: the run's state after its first N facts (nested streams: one run gives every
  N). Per N the runs form a frontier like the top-level ones, so forgetting at matched
  learning is computed per N (per draw, then mean and 95% CI over draws), each N at the
  levels its own SMF-baseline pairs reach, with each run's paired interval (``paired_ci``).
- ``stream.points[i].memory`` (and ``nested[N].memory``): the share of SMF value rows
  written so far and their share of the background text's reads.
- ``earlier_facts``: exact match on each quarter of the stream right after it was learned
  and at the end; ``kept`` = end / right after.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from smfexp.reporting.collect import flat_results
from smfexp.reporting.frontier import (
    FORGETTING_METRICS,
    INTERVAL_COLUMNS,
    LEVELS,
    MATCHED_COLUMNS,
    Levels,
    choose_levels,
    comparison_table,
    line_reach,
    matched_learning,
    matched_notes,
    measure_rows,
    pair_levels,
    pair_reach,
)
from smfexp.reporting.plots import (
    PARTIAL_NOTE,
    Facet,
    Panel,
    curve_grid,
    curve_means,
    empty_figure,
    figure_legend,
    line_order,
    new_figure,
    open_markers,
)
from smfexp.reporting.stats import MeanCI, fmt_ci, mean_ci
from smfexp.reporting.stream import each_results, stream_panels, stream_points
from smfexp.reporting.tables import md_table

MEMORY_KEYS = {"rows_touched_share": "value rows written so far",
               "touched_background_share": "their share of background reads"}
# in the table only: not a share, and recorded by runs since 2026-12-03 alone
READ_CHANGE = "background_read_change"
# distinct (fact, row) writes / slots and its nominal top_t x facts / slots: not shares, in
# the table only, beside rows touched (which saturates while the load keeps growing)
WRITE_LOAD = ("write_load", "write_load_nominal")
MEMORY_TABLE_KEYS = ("rows_touched_share", *WRITE_LOAD, "touched_background_share", READ_CHANGE)


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(float(value)):
        return float(value)
    return None


def _nested(results: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    nested = results.get("nested")
    out = []
    for key, entry in (nested.items() if isinstance(nested, Mapping) else []):
        if isinstance(entry, Mapping):
            facts = _number(entry.get("facts"))
            try:
                out.append((int(facts) if facts is not None else int(key), entry))
            except ValueError:
                continue
    return sorted(out, key=lambda kv: kv[0])


# --------------------------------------------------------------------------- forgetting vs N
def nested_grid(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (line, point, draw, facts N, probe): learning and forgetting (% change,
    + = worse) after the first N facts, from ``results["nested"]``, with each state's own
    paired intervals (:data:`INTERVAL_COLUMNS`, NaN / None where a run predates them)."""
    columns = ["line", "point", "draw", "facts", "probe", "learning", "forgetting",
               *INTERVAL_COLUMNS]
    rows = []
    for labels, results in each_results(df):
        for facts, entry in _nested(results):
            for row in measure_rows(flat_results(entry), labels["target_metric"]):
                rows.append({**{k: labels[k] for k in ("line", "point", "draw")},
                             "facts": facts, **row})
    return pd.DataFrame(rows, columns=columns)


def same_length_grid(grid: pd.DataFrame, nested: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The matched-learning grid at one stream length for every run: when runs end at
    different N (SMF at 1000 facts, a baseline at 256 in every draw and at 1000 in one), each
    run's scores after the longest N that every draw of every line reached (from ``nested``),
    with a note saying so; else ``grid``."""
    if nested.empty or not set(grid["line"]) <= set(nested["line"]):
        return grid, ""
    if nested.groupby(["line", "point", "draw"])["facts"].max().nunique() <= 1:
        return grid, ""  # every run ends at the same N: its end scores are comparable
    reach = nested.groupby(["line", "draw"])["facts"].max()
    n = int(reach.min())
    at_n = nested[nested["facts"] == n].assign(seed=None)
    ends = ", ".join(
        f"{line} {_span(block)}" for line, block in
        sorted(reach.groupby(level="line"), key=lambda kv: line_order(kv[0])))
    note = (f"Compared after the first {n} facts, the longest stream every draw of every method "
            f"ran (draws end at: {ends} facts); other lengths: the table against stream "
            "length below.")
    return at_n[grid.columns.tolist()], note


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}-{high}"


def scale_levels(nested: pd.DataFrame) -> dict[int, Levels]:
    """Per stream length N, the levels its SMF-baseline pairs compare at
    (:func:`choose_levels` of that N's grid)."""
    return {int(n): choose_levels(block) for n, block in nested.groupby("facts", sort=True)}


def figure_level(nested: pd.DataFrame) -> float:
    """The level ``scale.png`` draws: 25% when SMF and some baseline both reach it at every
    N, else the highest step they reach at every N (a line short of it leaves a gap)."""
    shared = min((max(pair_reach(line_reach(block)).values(), default=0.0)
                  for _, block in nested.groupby("facts")), default=0.0)
    levels = pair_levels(shared)
    return LEVELS[0] if shared >= LEVELS[0] or not levels else levels[-1]


def matched_vs_n(nested: pd.DataFrame, levels: Sequence[float] | None = None) -> pd.DataFrame:
    """:func:`matched_learning` per stream length N, with a ``facts`` column; ``levels=None``:
    each N at its own :func:`scale_levels`."""
    chosen = scale_levels(nested) if levels is None else {}
    parts = [matched_learning(block, chosen[int(facts)].values if levels is None else levels)
             .assign(facts=int(facts)) for facts, block in nested.groupby("facts", sort=True)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=[*MATCHED_COLUMNS, "facts"])


def scale_markdown(nested: pd.DataFrame) -> str:
    """The forgetting-at-matched-learning table per probe, rows = (N, level)."""
    if nested.empty:
        return ""
    levels = scale_levels(nested)
    table = matched_vs_n(nested)
    parts = ["### Forgetting at matched learning vs stream length\n",
             "Each run scored after its first N facts (`nested`); per N, SMF meets each "
             "baseline up to the most learning both reach (as above), forgetting is "
             "interpolated along each draw's frontier, then mean ± 95% t-interval half-width "
             "over draws (n). `not run`: no run of that method reached N. Figure: "
             f"`scale.png`, at {figure_level(nested):.0%} learned.\n",
             *(n + "\n" for n in matched_notes(table, nested))]
    low = [f"N={n}: {lv.note}" for n, lv in levels.items() if lv.note]
    if low:
        parts.append(" ".join(low) + "\n")
    for probe, block in table.groupby("probe", sort=False):
        parts.append(f"**{probe}** ({FORGETTING_METRICS[probe][0]}, % change)\n\n"
                     f"{comparison_table(block, lead='facts')}\n")
    return "\n".join(parts) + "\n"


def scale_figure(nested: pd.DataFrame) -> Figure:
    """One panel per forgetting probe: x = N (log), y = forgetting at the matched level,
    one line per method with 95% CI error bars over draws; the legend outside."""
    probes = list(dict.fromkeys(nested["probe"])) if not nested.empty else []
    if not probes:
        return empty_figure("no nested results (results.json 'nested')")
    fig = new_figure(4.4 * len(probes) + 1.4, 3.7)
    level = figure_level(nested)
    table = matched_vs_n(nested, [level])
    lines = sorted(table["line"].unique(), key=line_order)
    colors = {ln: f"C{i % 10}" for i, ln in enumerate(lines)}
    ns = sorted(table["facts"].unique())
    axes = []
    for i, probe in enumerate(probes, 1):
        ax = fig.add_subplot(1, len(probes), i)
        axes.append(ax)
        for line, color in colors.items():
            mine = table[(table["probe"] == probe) & (table["line"] == line)
                         & table["forgetting"].notna()].sort_values("facts")
            if mine.empty:
                continue
            ax.errorbar(mine["facts"], mine["forgetting"].astype(float),
                        yerr=mine["ci"].astype(float).fillna(0), fmt="o-", capsize=3,
                        color=color, label=line, lw=1.4, ms=4)
            partial = (mine["draws"] < mine["of"]).to_numpy()
            if partial.any():
                open_markers(ax, mine["facts"][partial], mine["forgetting"][partial], color)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.grid(alpha=0.25)
        ax.set_xlabel("facts in the stream (N)")
        ax.set_ylabel(f"{FORGETTING_METRICS[probe][0]} change (%)\n(↑ more forgetting)")
        ax.set_title(f"{probe} at {level:.0%} learned")
    figure_legend(fig, axes, title=f"mean ± 95% CI over draws\n{PARTIAL_NOTE}")
    return fig


# --------------------------------------------------------------------------- along the stream
def nested_scores(df: pd.DataFrame) -> pd.DataFrame:
    """``nested[N].after`` as a long table like :func:`stream_points` (line, point, draw,
    facts, probe, metric, value): the stream figure marks them on the curves."""
    rows = []
    for labels, results in each_results(df):
        for facts, entry in _nested(results):
            after = entry.get("after") if isinstance(entry.get("after"), Mapping) else {}
            for probe, metrics in after.items():
                for metric, value in (metrics.items() if isinstance(metrics, Mapping) else []):
                    if metric != "n" and (v := _number(value)) is not None:
                        rows.append({"line": labels["line"], "point": labels["point"],
                                     "draw": labels["draw"], "facts": facts, "probe": probe,
                                     "metric": metric, "value": v})
    return pd.DataFrame(rows, columns=["line", "point", "draw", "facts", "probe", "metric",
                                       "value"])


def scale_stream_figure(df: pd.DataFrame, target_metric: str = "exact_match") -> Figure:
    """Learning (facts seen so far) and each forgetting probe along the stream: a row per
    method (per six grid points), a labelled curve per grid point (squares: the nested N),
    and, when the runs have it, how much of each quarter's facts is kept at the end."""
    stream, marks = stream_points(df), nested_scores(df)
    panels = stream_panels(pd.concat([x for x in (stream, marks) if not x.empty] or [stream]),
                           target_metric)
    earlier = earlier_facts(df)
    extra = [("earlier facts kept", partial(_earlier_panel, earlier))] if not earlier.empty \
        else []
    return curve_grid(stream, marks, panels, "facts seen", extra,
                      empty="no stream or nested scores")


def _earlier_panel(earlier: pd.DataFrame, ax: Axes, facet: Facet) -> None:
    """Share of each quarter's facts kept at the end (mean ± 95% CI over draws) per grid
    point of ``facet``."""
    mine = earlier[earlier["line"] == facet.line].rename(columns={"kept": "value"})
    kept = curve_means(mine.dropna(subset=["value"]), ["line", "point", "quarter"])
    for point in facet.points:
        block = kept[kept["point"] == point]
        if not block.empty:
            ax.errorbar(block["quarter"], 100 * block["value"],
                        yerr=100 * block["ci"].astype(float).fillna(0), fmt="o-",
                        color=facet.color(point), capsize=2, ms=4, lw=1.0,
                        label=facet.labels[point])
    quarters = sorted(earlier["quarter"].dropna().unique())
    ax.set_xticks(quarters, [str(q) for q in quarters])
    ax.set_xlim(min(quarters) - 0.5, max(quarters) + 0.5)
    ax.axhline(100, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("quarter of the stream")
    ax.set_ylabel("exact match at the end / right after (%)", fontsize=8)


# --------------------------------------------------------------------------- memory fill
def memory_points(df: pd.DataFrame) -> pd.DataFrame:
    """line, point, draw, facts, key, value of SMF's memory fill: stream points' ``memory``,
    then ``nested[N].memory`` at the N the stream did not score."""
    rows = []
    for labels, results in each_results(df):
        seen: set[tuple[int, str]] = set()
        stream = results.get("stream") if isinstance(results.get("stream"), Mapping) else {}
        entries = [(_number(p.get("facts")), p.get("memory"))
                   for p in stream.get("points", []) if isinstance(p, Mapping)]
        entries += [(float(n), e.get("memory")) for n, e in _nested(results)]
        for facts, memory in entries:
            for key in MEMORY_TABLE_KEYS:
                value = _number(memory.get(key)) if isinstance(memory, Mapping) else None
                if facts is None or value is None or (int(facts), key) in seen:
                    continue
                seen.add((int(facts), key))
                rows.append({"line": labels["line"], "point": labels["point"],
                             "draw": labels["draw"], "facts": int(facts), "key": key,
                             "value": value})
    return pd.DataFrame(rows, columns=["line", "point", "draw", "facts", "key", "value"])


def memory_figure(memory: pd.DataFrame) -> Figure:
    """Share of value rows written and their share of background reads vs facts seen: a row
    per SMF line (per six grid points), a labelled curve per grid point (mean over draws,
    95% CI shaded)."""
    shares = memory[memory["key"].isin(list(MEMORY_KEYS))]
    long = shares.assign(probe=shares["key"], metric="%", value=100 * shares["value"])
    panels = [Panel(key, "%", title, f"{key} (%)") for key, title in MEMORY_KEYS.items()]
    fig = curve_grid(long, long.iloc[0:0], panels, "facts seen",
                     empty="no memory diagnostics (SMF stream points' 'memory')")
    for ax in fig.axes:
        if ax.get_ylabel():
            ax.set_ylim(0, 100)
    return fig


def memory_markdown(memory: pd.DataFrame, at: Sequence[int] = ()) -> str:
    """Memory fill at the stream lengths ``at`` (the nested N), else at every stream point."""
    if at and memory["facts"].isin(at).any():
        memory = memory[memory["facts"].isin(at)]
    if memory.empty:
        return ""
    index = sorted({(r.line, r.point, r.facts) for r in memory.itertuples()},
                   key=lambda k: (line_order(k[0]), k[1], k[2]))
    rows = []
    for line, point, facts in index:
        cells = [line, point, str(facts)]
        for key in MEMORY_TABLE_KEYS:
            values = memory[(memory["key"] == key) & (memory["line"] == line)
                            & (memory["point"] == point) & (memory["facts"] == facts)]["value"]
            share = key in MEMORY_KEYS
            digits = ".2f" if key in WRITE_LOAD else ".1f"
            cells.append(fmt_ci(mean_ci(100 * values if share else values), digits=digits,
                                unit="%" if share else ""))
        rows.append(cells)
    table = md_table(["method", "point", "facts", *MEMORY_TABLE_KEYS], rows)
    return ("### Memory fill along the stream\n\n"
            f"{table}\n\n"
            "`rows_touched_share`: share of SMF's value rows written so far; `write_load`: "
            "distinct (fact, row) writes per slot, mean over layers, beside its nominal "
            "`write_load_nominal` = top_t x facts / slots (– where a run predates it); "
            "`touched_background_share`: the share of background-text reads that land on "
            "them; `background_read_change`: sum over slots of the slot's share of background "
            "reads x its value's norm (memories that start empty; – where a run predates it). "
            "Mean ± 95% CI over draws (n). Figure: `memory_fill.png`.\n\n")


# --------------------------------------------------------------------------- earlier facts
def earlier_facts(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (line, point, draw, quarter) of ``results["earlier_facts"]``."""
    columns = ["line", "point", "draw", "metric", "quarter", "first", "last", "right_after",
               "end", "kept"]
    rows = []
    for labels, results in each_results(df):
        block = results.get("earlier_facts")
        if not isinstance(block, Mapping):
            continue
        for q in block.get("quarters") or []:
            if not isinstance(q, Mapping):
                continue
            span = q.get("facts") if isinstance(q.get("facts"), list) else [None, None]
            right, end = _number(q.get("right_after")), _number(q.get("end"))
            kept = _number(q.get("kept")) if "kept" in q else (
                end / right if right and end is not None else None)
            rows.append({"line": labels["line"], "point": labels["point"],
                         "draw": labels["draw"], "metric": str(block.get("metric", "?")),
                         "quarter": q.get("quarter"), "first": span[0], "last": span[-1],
                         "right_after": right, "end": end, "kept": kept})
    return pd.DataFrame(rows, columns=columns)


def earlier_summary(earlier: pd.DataFrame) -> pd.DataFrame:
    """Mean, 95% CI half-width and n over draws of right_after / end / kept per quarter."""
    rows = []
    for (line, point, quarter), block in earlier.groupby(["line", "point", "quarter"],
                                                          sort=False):
        row: dict[str, Any] = {"line": line, "point": point, "quarter": quarter,
                               "first": block["first"].iloc[0], "last": block["last"].iloc[0]}
        for col in ("right_after", "end", "kept"):
            ci = mean_ci(block[col].astype(float))
            row.update({col: ci.mean, f"{col}_ci": ci.half, f"{col}_n": ci.n})
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = out["line"].map(line_order)
    return out.assign(_o=order).sort_values(["_o", "point", "quarter"], kind="stable") \
        .drop(columns="_o").reset_index(drop=True)


def earlier_markdown(earlier: pd.DataFrame) -> str:
    """The retention-of-earlier-facts table (the continual-learning number)."""
    if earlier.empty:
        return ""
    summary = earlier_summary(earlier)
    rows = []
    for r in summary.itertuples():
        cells = [r.line, r.point, str(r.quarter), f"{r.first}–{r.last}"]
        for col in ("right_after", "end", "kept"):
            ci = MeanCI(getattr(r, col), getattr(r, f"{col}_ci"), getattr(r, f"{col}_n"))
            cells.append(fmt_ci(ci, digits=".3g"))
        rows.append(cells)
    metric = ", ".join(sorted(earlier["metric"].unique()))
    table = md_table(["method", "point", "quarter", "facts", "right after", "end",
                      "kept (end / right after)"], rows)
    return ("### Retention of earlier facts\n\n"
            f"{table}\n\n"
            f"{metric} on the facts of each quarter of the stream just after that quarter was "
            "learned and at the end of the stream; kept = end / right after per draw (none "
            "when nothing was learned), then mean ± 95% CI over draws (n). Also the last "
            "panel of `scale_stream.png`.\n\n")


__all__ = ["earlier_facts", "earlier_markdown", "memory_figure", "memory_markdown",
           "memory_points", "nested_grid", "scale_figure", "scale_markdown",
           "scale_stream_figure"]
