"""``python -m smfexp.report <dir>``: compare target gain vs forgetting across runs.

<dir> is a run dir, a multirun dir (also a partial sweep) or any folder above them.
Writes summary.md/csv, runs.csv, pareto.png, training_curves.png, frontier.png and
stream.png into ``--out`` (default ``<dir>/report``) and prints the Markdown. summary.md
opens with the answer (SMF vs the best baseline at matched learning, one table, and
matched.png), then the per-run tables (mean and 95% interval over fact draws per grid
point) and the full forgetting-at-matched-learning tables. Scale runs (results.json
``nested`` / ``earlier_facts`` / stream ``memory``) add scale.png, scale_stream.png,
memory_fill.png and their sections; SMF runs add how specific their row selection was.
The report names paths relatively, never by this machine's absolute path.

``python -m smfexp.report --relocate DIR...`` instead rewrites the absolute machine paths
in the run outputs and reports under each DIR (results.json, .hydra/*.yaml, train.log,
CSV, summary.md) as paths relative to the repository (see smfexp.reporting.relocate): run
it on results copied from another machine before committing them; a second run changes
nothing. ``python -m smfexp.report --versus RUN RUN [--facts N]`` compares two runs on the
same items (smfexp.reporting.versus). Hydra-free on purpose: reporting must work on a
laptop that only has the output folders.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smfexp.reporting import Report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m smfexp.report",
        description="Summarise smfexp runs: target gain vs forgetting (tables + plots).",
    )
    p.add_argument("dirs", type=Path, nargs="+", metavar="DIR",
                   help="run dir, multirun dir, or any folder above them (one, unless "
                        "--relocate)")
    p.add_argument("--relocate", action="store_true",
                   help="instead of a report: rewrite the absolute machine paths in the "
                        "outputs and reports under each DIR relative to the repository "
                        "(atomic, safe to rerun), e.g. before committing results")
    p.add_argument("--versus", action="store_true",
                   help="instead of a report: compare two runs (DIR DIR: first, second) on "
                        "the same items - each probe's difference with its paired 95%% "
                        "interval (runs that wrote items.json)")
    p.add_argument("--facts", type=int, default=None, metavar="N",
                   help="with --versus: compare the scores after the first N facts of a "
                        "nested stream (default: each run's end)")
    p.add_argument("--repo", type=Path, default=None,
                   help="with --relocate: the root paths become relative to (default: the "
                        "git checkout holding DIR)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <dir>/report)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", default=None,
                   help="also save a W&B workspace for this project (needs network + API key)")
    p.add_argument("--wandb-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="give up publishing after this long (default 60)")
    return p


def _publish(report: Report, target: str, out: Path, timeout: float) -> str:
    from smfexp.reporting import stream_keys, summary_keys, training_keys
    from smfexp.reporting.tables import display_columns
    from smfexp.reporting.wandb_workspace import publish_workspace, spec_json, workspace_spec
    from smfexp.utils.io import atomic_write_text

    entity, _, project = target.partition("/")
    if not entity or not project or "/" in project:
        raise ValueError(f"--wandb expects ENTITY/PROJECT, got {target!r}")
    runs = report.runs
    keys = [*summary_keys(runs), *training_keys(runs), *stream_keys(runs)]
    metrics: dict[str, set[str]] = {}
    for col in display_columns(runs):
        metrics.setdefault(col.probe, set()).add(col.metric)
    spec = workspace_spec(entity, project, keys, metrics=metrics)
    atomic_write_text(out / "wandb_workspace.json", spec_json(spec) + "\n")
    return publish_workspace(entity, project, keys, metrics=metrics, timeout=timeout)


def _quick_check(root: Path) -> str | None:
    """Fail in milliseconds, before pandas/matplotlib/torch load, when there is nothing to do."""
    if not root.is_dir():
        return f"{root} is not a directory"
    if next(root.rglob("results.json"), None) is None:
        return f"no results.json found under {root}"
    return None


def _relocate(dirs: Sequence[Path], repo: Path | None) -> int:
    """``--relocate``: rewrite each DIR's machine paths; say what changed and what was left."""
    from smfexp.reporting.relocate import relocate_tree, relocation_summary

    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        print(f"error: {missing[0]} is not a directory", file=sys.stderr)
        return 2
    for folder in dirs:
        print(relocation_summary(relocate_tree(folder, repo), folder), file=sys.stderr)
    return 0


def _versus(dirs: Sequence[Path], facts: int | None) -> int:
    """``--versus``: two runs' paired differences, probe by probe, as Markdown."""
    from smfexp.reporting.versus import versus_markdown

    try:
        print(versus_markdown(dirs[0], dirs[1], facts))
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.relocate:
        return _relocate(args.dirs, args.repo)
    if args.versus:
        if len(args.dirs) != 2:
            parser.error("--versus compares two run dirs: FIRST SECOND")
        return _versus(args.dirs, args.facts)
    if len(args.dirs) != 1:
        parser.error("a report is made for one DIR (several only with --relocate)")
    folder = args.dirs[0]
    problem = _quick_check(folder)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from smfexp.reporting import NoResultsError, write_report

    out = args.out if args.out is not None else folder / "report"
    try:
        report = write_report(folder, out)
    except NoResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.markdown)
    print(f"report written to {out}", file=sys.stderr)
    if args.wandb:
        from smfexp.reporting.wandb_workspace import PublishError

        try:
            url = _publish(report, args.wandb, out, args.wandb_timeout)
        except (PublishError, ValueError) as err:
            print(f"error: W&B workspace not published: {err}", file=sys.stderr)
            return 1
        print(f"W&B workspace: {url}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
