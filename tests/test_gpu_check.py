"""benchmarks/gpu_check.py: --dry-run writes every section with numbers; without CUDA it says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NO_CUDA = (
    "gpu_check: no CUDA device here; nothing to check (use --dry-run to exercise the code "
    "paths on CPU)"
)
SECTIONS = (
    "## 1. Device tests",
    "## 2. Short training runs",
    "## 3. Training step time and peak memory",
    "## 4. Eval throughput",
)


def _section(text: str, heading: str) -> str:
    """The text from ``heading`` to the next second-level heading."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def _rows(section: str) -> list[dict[str, str]]:
    """The first Markdown table of a section as {header: cell} rows."""
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(head, [c.strip() for c in ln.strip("|").split("|")], strict=True))
        for ln in lines[2:]
    ]


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def _isolated_env(tmp_path: Path, data_dir: Path) -> dict[str, str]:
    """Retrofits and statistics go to a temporary cache; the converted tokenizer is reused."""
    from smfexp.utils.io import cache_root

    cache = tmp_path / "cache"
    cache.mkdir()
    if (cache_root() / "models").is_dir():
        (cache / "models").symlink_to(cache_root() / "models")
    return {
        **os.environ,
        "SMFEXP_DATA_DIR": str(data_dir),
        "SMFEXP_CACHE": str(cache),
        "WANDB_MODE": "offline",
    }


def test_dry_run_writes_every_section_with_numbers(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        cwd=tmp_path,
        env=_isolated_env(tmp_path, data_dir),
        capture_output=True,
        text=True,
        timeout=600,  # the script keeps its own 480 s budget; this only catches a hang
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "--dry-run" in text and "## Machine" in text and "## Targets" in text
    for heading in SECTIONS:
        assert "Status: **ok**" in _section(text, heading), heading

    (tests,) = _rows(_section(text, SECTIONS[0]))
    assert _number(tests["passed"]) > 0 and tests["failed"] == "0"
    runs = _rows(_section(text, SECTIONS[1]))
    assert [r["method"] for r in runs] == ["smf", "lora", "full"]
    assert all(r["exit code"] == "0" and r["results.json status"] == "ok" for r in runs)
    steps = _rows(_section(text, SECTIONS[2]))
    assert len(steps) == 8  # 2 shapes x (smf small, smf large, lora, full)
    assert all(_number(r["median step (ms)"]) > 0 for r in steps)
    evals = _rows(_section(text, SECTIONS[3]))
    assert len(evals) == 2 and all(_number(r["tokens/s"]) > 0 for r in evals)
    assert _number(evals[1]["tokens per run"]) == 4 * 8  # every prompt ran to max_gen_toks


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_prints_one_line_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=tmp_path,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [NO_CUDA]
    assert not out.exists()
