"""experiment=smoke is data-agnostic: it composes, validates and runs with every data option,
from any working directory, with the data found through ``paths.data_dir`` alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.mark.parametrize("method", ["smf", "lora", "full"])
@pytest.mark.parametrize("data", ["medmcqa", "triviaqa_facts", "facts"])
def test_smoke_validates_with_every_data_option(data, method, data_dir):
    from smfexp.run_config import TrainConfig

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "experiment=smoke", f"method={method}", f"data={data}", f"paths.data_dir={data_dir}",
            "paths.output_dir=out"])
    TrainConfig.from_hydra(cfg)
    assert cfg.model.source == "tiny" and cfg.trainer.max_steps == 2


def _env(tmp_path: Path) -> dict[str, str]:
    """No $SMFEXP_DATA_DIR, hub off, a fresh cache (the converted tokenizer reused)."""
    from smfexp.utils.io import cache_root

    cache = tmp_path / "cache"
    cache.mkdir()
    if (cache_root() / "models").exists():
        (cache / "models").symlink_to(cache_root() / "models")
    env = {k: v for k, v in os.environ.items() if k != "SMFEXP_DATA_DIR"}
    return {**env, "SMFEXP_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}


def test_smoke_runs_facts_from_another_directory(tmp_path, data_dir):
    """The issue's command, started outside the checkout: training data, background and
    every probe read ``paths.data_dir`` (offline, so a miss would fail the run)."""
    elsewhere = tmp_path / "elsewhere"  # no ./data here
    elsewhere.mkdir()
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "smfexp.train", "experiment=smoke", "method=smf",
         "data=triviaqa_facts", "data.n_facts=8", "logger=csv",
         f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"],
        cwd=elsewhere, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "ok" and results["steps"] == 2
    assert results["data"]["n_target_eval"] == 8
    assert results["data"]["source"].startswith(f"local:{Path(data_dir).resolve()}")
    for section in ("before", "after"):
        assert {"target", "medmcqa", "gsm8k"} <= set(results[section])
