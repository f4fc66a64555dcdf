"""SMF under Lightning DDP with 2 CPU processes (gloo): ranks select the same rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ddp_ranks_agree_on_selection_and_weights(tmp_path):
    from smfexp.utils.io import cache_root

    cache = tmp_path / "cache"
    cache.mkdir()
    if (cache_root() / "models").exists():
        (cache / "models").symlink_to(cache_root() / "models")
    env = {**os.environ, "SMFEXP_CACHE": str(cache), "SMFEXP_DATA_DIR": str(ROOT / "data")}
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "smfexp.train", "experiment=smoke", "method=smf", "selector=kl",
         "method.top_t=8", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "logger=csv", "trainer.max_steps=3", f"hydra.run.dir={run}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and results["steps"] == 3
    smf = results["smf"]
    # each rank saw different micro-batches; with all-reduced counts they selected the same
    # rows and applied the same averaged row gradients, so their tables are identical
    assert smf["world_size"] == 2 and smf["ranks_agree"] is True
    assert all(0 < n <= 3 * 8 for n in smf["updated_rows_per_layer"])
