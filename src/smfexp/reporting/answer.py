"""The report's opening: forgetting at matched learning, SMF against the best baseline.

What a reader of summary.md came for is one comparison: when SMF and LoRA / full finetuning
have learned the same share of the facts, which forgets less, by how much, and whether the
draws (and the probe's own items) resolve the difference. :func:`answer_markdown` says it in
one table (a row per probe and learning level) and :func:`matched_figure` draws it; the
per-run tables and the full per-probe comparison (every line) follow them.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from smfexp.reporting.frontier import (
    FORGETTING_METRICS,
    best_baseline,
    grid_items_note,
    is_baseline,
    is_missing,
    level_ci,
    line_rows,
    matched_cell,
    pct,
    probe_ci_of,
    ratio_text,
)
from smfexp.reporting.plots import (
    PARTIAL_NOTE,
    empty_figure,
    figure_legend,
    line_order,
    new_figure,
    open_markers,
)
from smfexp.reporting.stats import UNRESOLVED, overlap_text, paired_text
from smfexp.reporting.tables import md_table

ANSWER_TITLE = "### SMF vs the best baseline at matched learning"
OWN = "probe's own 95%"
PAIRED = "baseline − SMF, paired by draw"
FIGURE = "matched.png"
ANSWER_NOTE = (
    "Forgetting (each probe's relative change in %, + = worse) once SMF and the best "
    "baseline have learned the same share of the trained facts beyond the held-out "
    "questions: mean ± 95% t-interval over draws (n; `n=k of m draws`: only k reach the "
    "level). Best baseline = the LoRA / full finetuning line forgetting least among those "
    "reaching the level (a lever makes a line of its own: `full+replay`, `smf/tfidf+bound`). "
    "`ratio`: SMF / baseline (both values where the baseline's is not "
    "positive); `95% CIs over draws`: whether the two intervals overlap (`n<2`: one has no "
    "interval).")
PAIRED_NOTE = (f"`{PAIRED}`: the difference per draw (the same facts in both), mean ± 95% "
               "t-interval over the draws both ran; `separate` when it excludes 0.")
OWN_NOTE = (f"`probe's own 95%`: the probe's paired interval (its items, after vs before), "
            f"SMF / baseline, {UNRESOLVED} where it covers 0.")
MORE_NOTE = "How the levels are chosen, and every line: \"Forgetting at matched learning\" below."


def lines_of(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(SMF lines, baselines) of a matched table, in line order."""
    lines = sorted(table["line"].unique(), key=line_order) if not table.empty else []
    return ([ln for ln in lines if ln.startswith("smf")],
            [ln for ln in lines if is_baseline(ln)])


def _own(row: pd.Series) -> str:
    """``± 0.4`` (``†`` when it covers the value's 0) of one matched row, else ``–``."""
    probe = probe_ci_of(row)
    if probe is None or is_missing(row["forgetting"]):
        return "–"
    mark = f" {UNRESOLVED}" if probe.covers_zero(float(row["forgetting"])) else ""
    return f"± {probe.half:.2g}{mark}"


def _versus(at: pd.DataFrame, line: str, baselines: Sequence[str]) -> list[str]:
    """best baseline, ratio, overlap and the probe's own intervals of ``line`` at one level."""
    best = best_baseline(at, baselines)
    mine = level_ci(at, line)
    if best is None:
        return ["no baseline reaches it", "-", "-", "-", f"{_own(at.loc[line])} / –"]
    name, ref = best
    compared = mine.n > 0
    return [f"{name}: {matched_cell(at.loc[name], probe=False)}",
            ratio_text(mine, ref) if compared else "-",
            overlap_text(mine, ref) if compared else "-",
            paired_text(_draws(at.loc[line]), _draws(at.loc[name])) if compared else "-",
            f"{_own(at.loc[line])} / {_own(at.loc[name])}"]


def _draws(row: pd.Series) -> dict[str, float]:
    """{draw: forgetting} of one matched row ({} for tables that predate ``per_draw``)."""
    found = row.get("per_draw")
    return dict(found) if isinstance(found, dict) else {}


def answer_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the opening table: per probe, level and SMF line, SMF's
    forgetting, the best baseline's (named), their ratio and whether the intervals over
    draws separate, and the probe's own intervals; no rows without SMF and a baseline."""
    smf, baselines = lines_of(table)
    if not smf or not baselines:
        return [], []
    several = len(smf) > 1
    header = ["probe", "learned", *(["SMF line", "SMF"] if several else [smf[0]]),
              "best baseline", "ratio", "95% CIs over draws", PAIRED, OWN]
    rows = []
    for probe, block in table.groupby("probe", sort=False):
        name = f"**{probe}** ({FORGETTING_METRICS[probe][0]})"
        for level in sorted(block["level"].unique()):
            at = block[block["level"] == level].set_index("line")
            for line in (ln for ln in smf if ln in at.index):
                rows.append([name, pct(level), *([line] if several else []),
                             matched_cell(at.loc[line], probe=False),
                             *_versus(at, line, baselines)])
                name = ""  # the probe names its first row only
    if not any(r[-1] != "– / –" for r in rows):  # runs without paired intervals
        header, rows = header[:-1], [r[:-1] for r in rows]
    return header, rows


def beaten_note(table: pd.DataFrame) -> str:
    """Where SMF forgets and the best baseline forgets less (means over draws), said in
    words: a ratio above 1 in the table is easy to miss, and a baseline with replay may earn
    it. One clause per probe and baseline (the levels, the baseline's forgetting, the SMF
    lines it beats and theirs), not one per row. Where SMF improves a probe, the table's two
    values say the rest."""
    smf, baselines = lines_of(table)
    found: dict[tuple[str, str], list[tuple[float, str, float, float]]] = {}
    for probe, block in table.groupby("probe", sort=False):
        for level in sorted(block["level"].unique()):
            at = block[block["level"] == level].set_index("line")
            best = best_baseline(at, baselines)
            for line in (ln for ln in smf if ln in at.index):
                mine = level_ci(at, line)
                smf_forgets = mine.n > 0 and mine.mean > 0
                if smf_forgets and best is not None and best[1].mean < mine.mean:
                    found.setdefault((str(probe), best[0]), []).append(
                        (float(level), line, best[1].mean, mine.mean))
    clauses = [_beaten_clause(probe, baseline, rows) for (probe, baseline), rows in found.items()]
    return f"**A baseline forgets less than SMF** - {'; '.join(clauses)}." if clauses else ""


def _beaten_clause(probe: str, baseline: str,
                   rows: Sequence[tuple[float, str, float, float]]) -> str:
    """``wikitext at 5%-25%: full+replay -5.64% vs smf/tfidf, smf/tfidf+bg +0.03 to +0.84%``."""
    levels = sorted({level for level, *_ in rows})
    at = pct(levels[0]) if len(levels) == 1 else f"{pct(levels[0])}-{pct(levels[-1])}"
    lines = list(dict.fromkeys(line for _, line, _, _ in rows))
    return (f"{probe} at {at}: {baseline} {_span([r[2] for r in rows])} vs "
            f"{', '.join(lines)} {_span([r[3] for r in rows])}")


def _span(values: Sequence[float]) -> str:
    """``+0.50%``, or ``+0.03 to +0.84%`` when the values differ at two decimals."""
    low, high = f"{min(values):+.2f}", f"{max(values):+.2f}"
    return f"{low}%" if low == high else f"{low} to {high}%"


def answer_markdown(table: pd.DataFrame, grid: pd.DataFrame,
                    notes: Sequence[str] = (), figure: str | None = FIGURE) -> str:
    """The opening section: the table, what it says, the grid's notes and its figure; ""
    when the runs hold no SMF line and baseline to compare."""
    header, rows = answer_rows(table)
    if not rows:
        return ""
    own = [OWN_NOTE] if header[-1] == OWN else []
    legend = " ".join([ANSWER_NOTE, PAIRED_NOTE, *own, MORE_NOTE])
    said = [n for n in (beaten_note(table), *notes, grid_items_note(grid)) if n]
    parts = [f"{ANSWER_TITLE}\n", md_table(header, rows) + "\n", legend + "\n",
             *(n + "\n" for n in said)]
    if figure:
        parts.append(f"![forgetting at matched learning]({figure})\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- the figure
def _matched_panel(ax: Axes, block: pd.DataFrame, lines: Sequence[str],
                   colors: dict[str, str]) -> None:
    """Forgetting against the learning level, per line: mean ± 95% CI over draws, the
    probe's own interval shaded where the runs carry one."""
    for line in lines:
        mine = block[(block["line"] == line) & block["forgetting"].notna()]
        mine = mine.sort_values("level")
        if mine.empty:
            continue
        x, y = 100 * mine["level"].astype(float), mine["forgetting"].astype(float)
        ax.errorbar(x, y, yerr=mine["ci"].astype(float).fillna(0), fmt="o-", capsize=3,
                    color=colors[line], label=line, lw=1.4, ms=4)
        partial = (mine["draws"] < mine["of"]).to_numpy()
        if partial.any():
            open_markers(ax, x[partial], y[partial], colors[line])
        below = mine["probe_below"].astype(float)
        if below.notna().any():
            ax.fill_between(x, y + below, y + mine["probe_above"].astype(float),
                            color=colors[line], alpha=0.12, lw=0)
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    ax.grid(alpha=0.25)


def matched_figure(table: pd.DataFrame) -> Figure:
    """One panel per probe: x = facts learned (%), y = forgetting at that level; a line per
    method (more than six: a row per six, the baselines in each), legend outside."""
    smf, baselines = lines_of(table)
    probes = list(dict.fromkeys(table["probe"])) if not table.empty else []
    if not probes or not (smf or baselines):
        return empty_figure("no forgetting at matched learning")
    lines = sorted(table["line"].unique(), key=line_order)
    colors = {ln: f"C{i % 10}" for i, ln in enumerate(lines)}
    rows = line_rows(lines)
    fig = new_figure(4.2 * len(probes) + 1.4, 3.4 * len(rows))
    axes = fig.subplots(len(rows), len(probes), squeeze=False)
    levels = sorted(table["level"].unique())
    for r, row in enumerate(rows):
        for c, probe in enumerate(probes):
            ax = axes[r][c]
            _matched_panel(ax, table[table["probe"] == probe], row, colors)
            ax.set_xticks([100 * v for v in levels], [pct(v) for v in levels])
            if len(levels) > 1:
                span = 100 * (levels[-1] - levels[0])
                ax.set_xlim(100 * levels[0] - 0.08 * span, 100 * levels[-1] + 0.08 * span)
            ax.set_xlabel("facts learned beyond held-out")
            metric = FORGETTING_METRICS[probe][0]
            ax.set_ylabel(f"{metric} change (%)\n(↑ more forgetting)")
            ax.set_title(probe)
    band = "\nband: the probe's own interval" if table["probe_below"].notna().any() else ""
    figure_legend(fig, axes.ravel(), title=f"mean ± 95% CI over draws{band}\n{PARTIAL_NOTE}")
    return fig


__all__ = ["ANSWER_TITLE", "FIGURE", "answer_markdown", "answer_rows", "matched_figure"]
