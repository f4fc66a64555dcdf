"""Turn run/multirun directories into a gain-vs-forgetting comparison (tables, plots, W&B).

``write_report`` is what ``python -m smfexp.report`` and the notebook call; the submodules
are usable on their own (``collect`` -> DataFrame, ``answer``, ``tables``, ``plots``,
``frontier``, ``stream``, ``scale``, ``relocate``, ``wandb_workspace``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from smfexp.reporting.answer import FIGURE, answer_markdown, matched_figure
from smfexp.reporting.collect import (
    NoResultsError,
    collect_runs,
    is_control,
    load_runs,
    portable_runs,
    report_path,
    stream_keys,
    summary_keys,
    training_keys,
)
from smfexp.reporting.frontier import (
    choose_levels,
    frontier_figure,
    grid_table,
    matched_learning,
    matched_markdown,
)
from smfexp.reporting.nested_table import nested_markdown
from smfexp.reporting.plots import pareto_figure, save_png, training_curves_figure
from smfexp.reporting.scale import (
    earlier_facts,
    earlier_markdown,
    memory_figure,
    memory_markdown,
    memory_points,
    nested_grid,
    same_length_grid,
    scale_figure,
    scale_markdown,
    scale_stream_figure,
)
from smfexp.reporting.selection import selection_markdown, selection_points
from smfexp.reporting.stream import stream_figure, stream_points, stream_target_metric
from smfexp.reporting.tables import markdown_report, summarize
from smfexp.reporting.write_load import (
    write_load_figure,
    write_load_markdown,
    write_load_points,
)
from smfexp.utils.io import atomic_write_text

__all__ = [
    "NoResultsError",
    "Report",
    "collect_runs",
    "earlier_facts",
    "frontier_figure",
    "grid_table",
    "load_runs",
    "matched_markdown",
    "nested_grid",
    "stream_figure",
    "stream_keys",
    "stream_points",
    "summarize",
    "summary_keys",
    "training_keys",
    "write_report",
]


@dataclass
class Report:
    """What ``write_report`` produced: the data (for notebooks) and the files it wrote."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    markdown: str
    files: dict[str, Path] = field(default_factory=dict)


def write_report(root: str | Path, out: str | Path | None = None) -> Report:
    """Collect every run under ``root`` and write summary.md/csv, runs.csv and the PNGs
    (pareto, training curves, the learning-vs-forgetting frontier, curves along the stream).

    summary.md opens with the answer (SMF against the best baseline at matched learning,
    one table, and matched.png), then the per-run tables. Runs with the scale fields add,
    only then: scale.png (forgetting at matched learning vs stream length N, from
    ``nested``), scale_stream.png (learning and forgetting along the stream, a row per
    method, grid points labelled, earlier facts kept), memory_fill.png (SMF rows written and
    their share of background reads), write_load.png (learning and forgetting against SMF's
    write load) and their summary.md sections. Paths in the written
    files are relative (runs.csv ``run_dir``: to ``out``), so a report can be committed.
    ``out`` defaults to ``<root>/report``; it is never scanned for runs itself.
    """
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    runs = collect_runs(root, exclude=[out])
    summary = summarize(runs)
    # a control (replay without the facts) learns nothing by design: it sits in the runs
    # tables beside its baseline, never on a learning-forgetting frontier
    compared = runs[~runs["variant"].map(is_control)] if "variant" in runs else runs
    nested = nested_grid(compared)
    grid, grid_note = same_length_grid(grid_table(compared), nested)
    answer, answer_files = _answer(grid, grid_note, out)
    markdown = markdown_report(runs, summary, title=f"Report for {report_path(root, out)}",
                               lead=answer)
    matched = matched_markdown(grid, note=grid_note)
    if matched:
        markdown = markdown + "\n" + matched
    scale_md, scale_files = _scale_report(compared, nested, out)
    markdown += scale_md
    files = {
        "summary.md": atomic_write_text(out / "summary.md", markdown),
        "summary.csv": atomic_write_text(out / "summary.csv", summary.to_csv(index=False)),
        "runs.csv": atomic_write_text(out / "runs.csv",
                                      portable_runs(runs, root, out).to_csv(index=False)),
        **answer_files,
        "pareto.png": save_png(pareto_figure(runs), out / "pareto.png"),
        "training_curves.png": save_png(training_curves_figure(runs),
                                        out / "training_curves.png"),
        "frontier.png": save_png(frontier_figure(grid), out / "frontier.png"),
        "stream.png": save_png(stream_figure(compared), out / "stream.png"),
        **scale_files,
    }
    return Report(runs=runs, summary=summary, markdown=markdown, files=files)


def _answer(grid: pd.DataFrame, note: str, out: Path) -> tuple[str, dict[str, Path]]:
    """The opening section and matched.png: SMF against the best baseline at the levels
    :func:`choose_levels` picks; nothing when the runs hold no such pair."""
    if grid.empty:
        return "", {}
    levels = choose_levels(grid)
    table = matched_learning(grid, levels.values)
    text = answer_markdown(table, grid, notes=[note, levels.note])
    if not text:
        return "", {}
    return text, {FIGURE: save_png(matched_figure(table), out / FIGURE)}


def _scale_report(runs: pd.DataFrame, nested: pd.DataFrame,
                  out: Path) -> tuple[str, dict[str, Path]]:
    """The scale sections and figures, for whichever of nested / earlier_facts / memory /
    SMF selection diagnostics the runs carry (none for old runs: the report stays as it was)."""
    earlier = earlier_facts(runs)
    memory = memory_points(runs)
    loads = write_load_points(nested, memory)
    parts = [scale_markdown(nested), nested_markdown(nested), earlier_markdown(earlier),
             memory_markdown(memory, sorted(nested["facts"].unique())),
             write_load_markdown(loads), selection_markdown(selection_points(runs))]
    files: dict[str, Path] = {}
    if not nested.empty:
        files["scale.png"] = save_png(scale_figure(nested), out / "scale.png")
    if not (nested.empty and earlier.empty):
        figure = scale_stream_figure(runs, stream_target_metric(runs))
        files["scale_stream.png"] = save_png(figure, out / "scale_stream.png")
    if not memory.empty:
        files["memory_fill.png"] = save_png(memory_figure(memory), out / "memory_fill.png")
    if not loads.empty:
        files["write_load.png"] = save_png(write_load_figure(loads), out / "write_load.png")
    text = "".join(p for p in parts if p)
    return ("\n" + text if text else ""), files
