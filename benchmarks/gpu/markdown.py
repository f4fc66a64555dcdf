"""The results file: the machine table, the whole page, and an atomic write (a reader never
sees half a file). Tables and number cells: ``benchmarks/mdtable.py``, shared with the suite."""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from mdtable import GiB, table

from .env import Setup, installed_version
from .plan import Plan
from .sections import Section


def fint(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "**FAIL**")


HEADINGS = {
    "tests": "## 1. Device tests",
    "runs": "## 2. Short training runs",
    "steps": "## 3. Training step time and peak memory",
    "eval": "## 4. Eval throughput",
}


def version(dist: str) -> str:
    return installed_version(dist) or "not installed"


def machine_rows(plan: Plan) -> list[list[str]]:
    """Device, memory and library versions."""
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = (
            f"{torch.cuda.get_device_name(0)} (compute capability {props.major}."
            f"{props.minor}, {props.total_memory / GiB:.1f} GiB, "
            f"{torch.cuda.device_count()} visible)"
        )
    else:
        device = f"CPU ({platform.processor() or platform.machine()}; --dry-run)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    libs = ", ".join(f"{d} {version(d)}" for d in ("transformers", "lightning", "peft"))
    return [
        ["device", device],
        [
            "torch",
            f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}, cuDNN {cudnn or 'none'})",
        ],
        ["libraries", f"Python {platform.python_version()}, {libs}"],
        ["OS", platform.platform()],
    ]


def render(
    plan: Plan,
    setup: Setup,
    sections: Sequence[Section],
    command: str,
    started: datetime.datetime,
    seconds: float,
    work: Path | None,
) -> str:
    """The whole results file."""
    lines = [
        "# smfexp GPU check",
        "",
        f"Generated {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min by",
        "",
        f"    {command}",
        "",
    ]
    if plan.dry_run:
        lines += [
            "> **--dry-run**: tiny shapes on CPU, the same code paths. The numbers and the "
            "pass/fail of the targets say nothing about a GPU.",
            "",
        ]
    lines += ["## Machine", "", *table(["", ""], machine_rows(plan), "---|---|")]
    lines += ["## Setup", "", *(f"- {n}" for n in setup.notes), ""]
    for s in sections:
        lines += [
            HEADINGS[s.title],
            "",
            f"Status: **{s.status}**" + (f" - {s.error}" if s.error else ""),
            "",
            *s.lines,
        ]
    checks = [c for s in sections for c in s.checks]
    lines += ["## Targets", ""]
    lines += (
        table(
            ["check", "value", "target", "result"],
            [[c.name, c.value, c.target, verdict(c.ok)] for c in checks],
            "---|---:|---:|---|",
        )
        if checks
        else ["No target was measured.", ""]
    )
    bad = [s for s in sections if s.status != "ok"]
    lines += ["## Failed or skipped sections", ""]
    lines += [
        f"- {HEADINGS[s.title][3:]}: {s.status}" + (f" ({s.error})" if s.error else "") for s in bad
    ] or ["None."]
    if work is not None:
        lines += ["", f"Child logs kept in `{work}`."]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename: a reader never sees half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
