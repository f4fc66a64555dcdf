"""Slow: ``benchmarks/suite.py --quick`` end to end (tiny model, a few rows; minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "## Machine",
    "## 1. Forward pass",
    "## 2. Training step",
    "## 3. SMF scaling",
    "## 4. Peak memory (RSS)",
    "## 5. Evaluation",
)
NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?(x|%)?$")


def _tables(section: str) -> list[list[dict[str, str]]]:
    """Markdown tables of a section as lists of {header: cell} rows."""
    tables, current, head = [], [], None
    for line in [*section.splitlines(), ""]:
        if not line.startswith("|"):
            if head is not None:
                tables.append(current)
            current, head = [], None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if head is None:
            head = cells
        elif not set(line) <= set("|-: "):
            current.append(dict(zip(head, cells, strict=True)))
    return tables


def _numeric(cell: str) -> bool:
    return bool(NUMBER.match(cell))


def test_quick_suite_writes_every_section_with_numbers(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "SMFEXP_DATA_DIR": str(data_dir), "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--quick", "--out", str(out),
           "--json", str(tmp_path / "raw.json")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    for header in SECTIONS:
        assert header in text, header
    assert "python benchmarks/suite.py --quick" in text
    assert "failed" not in text.lower()
    for key in ("| CPU |", "| cores |", "| bf16 / AMX |", "torch ", "transformers "):
        assert key in text, key

    sections = {s.splitlines()[0]: s for s in text.split("\n## ")[1:]}
    timed = {"1. Forward pass": 4, "2. Training step": 12, "3. SMF scaling": 6,
             "5. Evaluation": 9}  # fmt: skip
    for title, n_rows in timed.items():
        first = _tables(sections[title])[0]
        medians = [r["median wall (s)"] for r in first if r["median wall (s)"]]
        assert len(medians) >= n_rows and all(_numeric(c) for c in medians), (title, first)
        rss = [r["peak RSS (GiB)"] for r in first if r["peak RSS (GiB)"]]
        assert len(rss) >= n_rows and all(_numeric(c) for c in rss), (title, first)
    memory = _tables(sections["4. Peak memory (RSS)"])[0]
    assert all(_numeric(r["peak RSS (GiB)"]) for r in memory)
    drift = {r["check"]: r["value"] for r in _tables(sections["5. Evaluation"])[-1]}
    assert all(_numeric(v) for v in drift.values()), drift

    raw = json.loads((tmp_path / "raw.json").read_text())
    assert not [k for k, r in raw["results"].items() if "error" in r]
    assert all(len(r["wall"]) >= 3 for r in raw["results"].values() if "wall" in r)
