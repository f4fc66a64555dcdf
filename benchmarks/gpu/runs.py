"""Section 2: ``python -m smfexp.train experiment=smoke`` for smf, lora and full in child
processes, read back from their results.json."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mdtable import fnum, table

from .env import ROOT, Setup, child_env, run_child
from .plan import METHODS, Budget, Plan
from .sections import Section, skipped


def find_data_dir(arg: str | None) -> Path | None:
    """--data-dir, $SMFEXP_DATA_DIR, <repo>/data, or <repo>/../shared/data (the first found)."""
    for candidate in (
        arg,
        os.environ.get("SMFEXP_DATA_DIR"),
        ROOT / "data",
        ROOT.parent / "shared" / "data",
    ):
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


def results_by_method(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every results.json under ``out_dir`` (one run dir, or a sweep's job dirs) by method."""
    found = {}
    for path in sorted(out_dir.rglob("results.json")):
        with contextlib.suppress(OSError, ValueError):
            res = json.loads(path.read_text())
            found[str(res.get("method"))] = res
    return found


def smoke_command(
    plan: Plan, methods: Sequence[str], out_dir: Path, data_dir: Path | None
) -> list[str]:
    """One run (``hydra.run.dir``) or, for several methods, one multirun (``hydra.sweep.dir``)."""
    sweep = len(methods) > 1
    return [
        sys.executable,
        "-m",
        "smfexp.train",
        *(["--multirun"] if sweep else []),
        "experiment=smoke",
        "logger=csv",
        f"trainer={plan.trainer_conf}",
        f"method={','.join(methods)}",
        f"hydra.sweep.dir={out_dir}" if sweep else f"hydra.run.dir={out_dir}",
        *([f"paths.data_dir={data_dir}"] if data_dir else []),
    ]


def smoke_rows(
    plan: Plan,
    setup: Setup,
    budget: Budget,
    work: Path,
    data_dir: Path | None,
    methods: Sequence[str],
) -> list[list[Any]]:
    """Run ``methods`` in one process; one table row each (last cell: why it failed, or "")."""
    if reason := budget.short(30):
        return [[m, "skipped", "", reason, "", "", "", ""] for m in methods]
    out_dir = work / f"run-{'-'.join(methods)}"
    timeout = budget.timeout(plan.run_timeout_s)
    run = run_child(
        smoke_command(plan, methods, out_dir, data_dir),
        child_env(setup, plan.device),
        work,
        timeout,
        work / f"{out_dir.name}.log",
    )
    found = results_by_method(out_dir)
    rows = []
    for method in methods:
        res = found.get(method, {"status": "no results.json"})
        ok = run.returncode == 0 and res.get("status") == "ok"
        why = "" if ok else str(res.get("error") or run.tail() or res.get("status"))[:300]
        if run.timed_out:  # the log's last line alone reads like success
            why = f"timed out after {timeout:.0f} s (last log line: {why})"[:300]
        rows.append(
            [
                method,
                "timed out" if run.timed_out else run.returncode,
                f"{run.wall_s:.1f}",
                res.get("status"),
                res.get("steps", "n/a"),
                res.get("precision", "n/a"),
                fnum((res.get("wall_seconds") or {}).get("total"), 3),
                why,
            ]
        )
    return rows


def runs_section(
    plan: Plan, setup: Setup, budget: Budget, work: Path, data_dir: Path | None
) -> Section:
    """``smfexp.train experiment=smoke`` per method: one process each (--dry-run: one sweep)."""
    if not (setup.has("hydra") and setup.has("omegaconf")):
        return skipped(
            "runs",
            "hydra-core / omegaconf cannot be imported here (no wheels installed them), so "
            "`smfexp.train` cannot run; prepare wheels with `--download-wheels DIR`",
        )
    section = Section("runs")
    how = (
        "one `--multirun method=smf,lora,full` process (the CPU runs are import-bound)"
        if plan.one_sweep
        else "one process per method"
    )
    section.lines += [
        f"`python -m smfexp.train experiment=smoke logger=csv trainer={plan.trainer_conf} "
        f"method=<m> hydra.run.dir=<tmp> paths.data_dir=<data>` (tiny model, 2 steps, "
        f"before/after scoring on a few rows); {how}. Wall = the process, including imports.",
        "",
    ]
    if data_dir is None:
        section.lines += ["No offline data folder found: the runs try the hub.", ""]
    groups = [METHODS] if plan.one_sweep else [(m,) for m in METHODS]
    rows = [row for g in groups for row in smoke_rows(plan, setup, budget, work, data_dir, g)]
    section.lines += table(
        [
            "method",
            "exit code",
            "wall (s)",
            "results.json status",
            "steps",
            "precision",
            "run's own total (s)",
            "error",
        ],
        rows,
        "---|---:|---:|---|---:|---|---:|---|",
    )
    failed = [f"{row[0]}: {row[-1]}" for row in rows if row[-1] and row[1] != "skipped"]
    if all(row[1] == "skipped" for row in rows):
        section.status, section.error = "skipped", str(rows[0][3])
    if failed:
        section.status, section.error = "failed", "; ".join(failed)
    return section
