"""The whole results file: the header and command, the machine, how it was measured, the
sections that ran (in the suite's order), and the configurations that failed or were skipped."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mdtable import table
from suite_plan import SECTIONS

from .evaluation import evaluation
from .facts import fact_sections
from .old_shape import forward, memory, scaling, train
from .results import Results

# one end-of-run scoring pass, written by benchmarks/bench_scoring.py and carried along
SCORING = Path(__file__).resolve().parents[1] / "results" / "scoring.md"
# each section of ``--only`` and what it writes (scaling: its peak memory section too)
BUILDERS: dict[str, tuple[Callable[[Results], list[str]], ...]] = {
    "facts": (fact_sections,),
    "forward": (forward,),
    "train": (train,),
    "scaling": (scaling, memory),
    "eval": (evaluation,),
}


def machine_rows(rep: Results, machine: dict[str, Any]) -> list[list[str]]:
    """CPU, cores, bf16 support, memory, load, software, OS and model."""
    # imported here: ``cases`` (which the suite imports first) puts src/ on sys.path
    from smfexp.utils.precision import resolve_precision

    s = rep.s
    threads = next((r["threads"] for r in rep.res.values() if "threads" in r), "n/a")
    flags = ", ".join(f"{k} {'yes' if on else 'no'}" for k, on in machine["flags"].items())
    versions = ", ".join(f"{k} {ver}" for k, ver in machine["versions"].items())
    return [
        ["CPU", machine["cpu"]],
        [
            "cores",
            f"{machine['cpus']} logical CPUs ({machine['affinity']} usable), torch "
            f"threads {threads}",
        ],
        [
            "bf16 / AMX",
            f"{flags}; torch fast-bf16 path: "
            f"{'yes' if machine['fast_bf16'] else 'no'} (`precision: auto` = "
            f"{resolve_precision('auto', 'cpu')})",
        ],
        [
            "memory",
            f"{machine['mem_total_gb']:.1f} GiB, "
            f"{machine['mem_available_gb']:.1f} GiB available at start",
        ],
        ["load average at start", str(machine["loadavg"])],
        ["software", f"Python {machine['python']}, {versions}"],
        ["OS", machine["platform"]],
        ["model", f"`{s.model}` (conf/model/{s.model}.yaml)"],
    ]


def render(
    rep: Results,
    machine: dict[str, Any],
    command: str,
    sections: list[str],
    started: datetime.datetime,
    seconds: float,
) -> str:
    s = rep.s
    failures = [(k, r) for k, r in rep.res.items() if "error" in r]
    skipped = [(k, r) for k, r in rep.res.items() if "skipped" in r]
    lines = [
        "# smfexp benchmarks",
        "",
        f"Generated {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min by",
        "",
        f"    {command}",
        "",
    ]
    if s.quick:
        lines += [
            "> **--quick**: tiny random model, small batch and tables, a few eval rows. "
            "A smoke test of the suite: the numbers and ratios say nothing about the "
            "targets.",
            "",
        ]
    lines += ["## Machine", "", *table(["", ""], machine_rows(rep, machine), "---|---|")]
    lines += [
        "## Method",
        "",
        "- Each configuration runs in its own child process (forked from the suite "
        "after imports, before any tensor work): peak RSS is per configuration.",
        f"- Timings: median of {s.runs} repetitions after {s.warmup} warm-up "
        f"(evaluation: {s.eval_runs}); wall = `perf_counter`, CPU = process CPU time "
        "(all threads). Ratios divide median wall times measured in this same run.",
        "- The machine may be shared: compare CPU with wall time to spot contention.",
        "",
    ]
    for sec in SECTIONS:
        if sec in sections:
            for build in BUILDERS[sec]:
                lines += build(rep)
    if SCORING.is_file():  # measured on its own (a scoring pass takes minutes, not seconds)
        lines += [SCORING.read_text(encoding="utf-8").rstrip(), ""]
    if failures or skipped:
        lines += ["## Failed or skipped configurations", ""]
        for k, r in failures:
            lines.append(f"- `{k}` failed: {r['error']}")
        for k, r in skipped:
            lines.append(f"- `{k}` skipped: {r['skipped']}")
        lines.append("")
    return "\n".join(lines)
