"""Lightning DDP with 2 CPU processes (gloo): SMF's ranks select the same rows; a baseline's
skipped steps (method.learned_loss) run under DDP too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ddp_run(tmp_path: Path, *overrides: str) -> dict:
    """results.json of a 3-step smoke run on 2 CPU processes."""
    from smfexp.utils.io import cache_root

    cache = tmp_path / "cache"
    cache.mkdir()
    if (cache_root() / "models").exists():
        (cache / "models").symlink_to(cache_root() / "models")
    env = {**os.environ, "SMFEXP_CACHE": str(cache), "SMFEXP_DATA_DIR": str(ROOT / "data")}
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "smfexp.train", "experiment=smoke", *overrides, "trainer=ddp",
         "trainer.accelerator=cpu", "trainer.devices=2", "logger=csv", "trainer.max_steps=3",
         f"hydra.run.dir={run}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run / "results.json").read_text())


def test_ddp_ranks_agree_on_selection_and_weights(tmp_path):
    results = _ddp_run(tmp_path, "method=smf", "selector=kl", "method.top_t=8")
    assert results["status"] == "ok" and results["steps"] == 3
    smf = results["smf"]
    # each rank saw different micro-batches; with all-reduced counts they selected the same
    # rows and applied the same averaged row gradients, so their tables are identical
    assert smf["world_size"] == 2 and smf["ranks_agree"] is True
    assert all(0 < n <= 3 * 8 for n in smf["updated_rows_per_layer"])


def test_ddp_baseline_skips_learned_steps_without_moving(tmp_path):
    """Every step below learned_loss: the ranks agree to skip, nothing moves (every score as
    it was), and the steps still count."""
    results = _ddp_run(tmp_path, "method=full", "data=triviaqa_facts", "data.n_facts=4",
                       "method.learned_loss=1e9")
    assert results["status"] == "ok" and results["steps"] == 3
    assert results["learned"]["steps_skipped"] == 3
    assert all(v == 0 for probe in results["delta"].values() for v in probe.values())
