"""End to end: composed configs -> real Lightning runs on the tiny model -> results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from smfexp.utils.net import hub_reachable

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

TINY_MEMORY = ["memory.layers=[1,2]", "memory.n_keys=16", "memory.knn=4", "memory.k_dim=32",
               "memory.heads=2"]
TINY_RETROFIT = ["retrofit.steps=3", "retrofit.batch_size=4", "retrofit.max_length=64",
                 "retrofit.parts=[wiki]", "retrofit.heldout_docs=4", "retrofit.heldout_batches=1",
                 "background.batch_size=4", "background.max_length=64",
                 "background.n=4"]


def compose_train(tmp_path: Path, data_dir: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "model=tiny", "logger=csv", "callbacks.progress_bar=none", "trainer.max_steps=2",
            "trainer.precision=32-true",
            "data=medmcqa", "data.eval_size=8", "eval.limit=4", "eval.probes=[medmcqa,gsm8k]",
            "eval.progress=false", f"paths.data_dir={data_dir}", *overrides])
    cfg.paths.output_dir = str(tmp_path)
    return cfg


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # retrofits/statistics of test models go to a per-session cache, the converted
    # embedded model (tokenizer) is reused from the user cache
    from smfexp.utils.io import cache_root

    models = cache_root() / "models"
    cache = tmp_path_factory.getbasetemp() / "smfexp-cache"
    (cache).mkdir(exist_ok=True)
    if not (cache / "models").exists() and models.exists():
        (cache / "models").symlink_to(models)
    monkeypatch.setenv("SMFEXP_CACHE", str(cache))


def _check_common(results: dict, method: str) -> None:
    assert results["status"] == "ok" and results["method"] == method
    assert results["steps"] == 2
    assert results["data"]["source"].startswith("local:")
    assert results["data"]["n_target_eval"] == 8
    for section in ("before", "after", "delta"):
        assert set(results[section]) == {"target", "gsm8k"}, section  # medmcqa == target
    assert results["target_metric"] == "acc"
    assert results["trainable_params"] > 0 and results["wall_seconds"]["total"] > 0
    wall = results["wall_seconds"]  # scoring's share of the run is a budget users check
    assert 0 < wall["scoring"] < wall["fit_with_eval"]
    assert wall["scoring"] >= sum(results["eval_seconds"].values())
    assert results["precision"] == "32-true"


@pytest.mark.parametrize("method", ["lora", "full"])
def test_baseline_run_writes_complete_results(method, tmp_path, data_dir):
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    cfg = compose_train(tmp_path, data_dir, [f"method={method}"])
    results = train(TrainConfig.from_hydra(cfg))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["method"] == method and on_disk["after"] == results["after"]
    _check_common(on_disk, method)
    assert on_disk["selector"] is None
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").is_file()
    assert (tmp_path / on_disk["trained_artifact"]).is_dir()  # relative to the run dir


def test_baseline_levers_reach_results(tmp_path, data_dir):
    """Full finetuning with replay and the L2 / EWC pull, through the config: results.json
    records both, and the data the replay read."""
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    levers = ["method=full", "method.replay_k=1", "method.replay_length=32",
              "method.replay_source=[wiki]", "method.l2_to_base=0.1", "method.ewc=0.5",
              "method.ewc_batches=2"]
    results = train(TrainConfig.from_hydra(compose_train(tmp_path, data_dir, levers)))
    _check_common(results, "full")
    assert results["replay"] == {"k": 1, "weight": 1.0, "length": 32, "parts": ["wiki"],
                                 "seed": 0}
    assert results["data"]["replay"]["blocks"] > 0
    pull = results["base_pull"]
    assert (pull["l2_to_base"], pull["ewc"], pull["ewc_batches"]) == (0.1, 0.5, 2)
    assert pull["distance_to_base"] > 0


def test_smf_run_retrofits_once_and_reports_rows(tmp_path, data_dir):
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    overrides = ["method=smf", "selector=kl", "method.top_t=8", "method.log_selection_every=2",
                 *TINY_MEMORY, *TINY_RETROFIT]
    first = train(TrainConfig.from_hydra(compose_train(tmp_path / "a", data_dir, overrides)))
    _check_common(first, "smf")
    # the loss on every step; the per-layer selection numbers on every 2nd (a small CSV)
    log = pd.read_csv(tmp_path / "a" / "csv" / "version_0" / "metrics.csv")
    assert log["train/loss"].notna().sum() >= 2
    rows = log.dropna(subset=["smf/L0/rows_selected"])
    assert len(rows) == 1  # the second (the last) optimizer step's only, never repeated
    assert rows["step"].item() == 2 and rows["smf/L0/rows_selected"].item() == 8
    assert first["selector"] == "kl"
    smf = first["smf"]
    assert all(0 < r <= 2 * 8 for r in smf["updated_rows_per_layer"])  # <= steps * top_t
    assert smf["bytes_changed"] == sum(smf["updated_rows_per_layer"]) * 64 * 4
    usage = smf["background_key_usage"]  # one entry per memory layer
    assert len(usage) == len(smf["slots_per_layer"])
    assert all(0 < u["coverage"] <= 1 and 0 < u["top1pct_read_share"] <= 1 for u in usage)
    assert first["retrofit"]["heldout_loss"]["retrofitted"] > 0
    cached = sorted(Path(first["retrofit"]["checkpoint"]).iterdir())
    stamps = {f.name: f.stat().st_mtime_ns for f in cached}
    second = train(TrainConfig.from_hydra(compose_train(tmp_path / "b", data_dir, overrides)))
    assert second["retrofit"]["checkpoint"] == first["retrofit"]["checkpoint"]
    assert {f.name: f.stat().st_mtime_ns for f in cached} == stamps  # reused, not rebuilt
    assert second["after"]["target"] == first["after"]["target"]  # same seed, same result


def test_invalid_values_fail_before_loading(tmp_path, data_dir):
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    for override, message in [("method.lr=0", "method.lr"),
                              ("eval.limit=-1", "eval.limit"),
                              ("memory.knn=2000", "knn")]:
        cfg = compose_train(tmp_path, data_dir, ["method=smf", override])
        with pytest.raises(ValueError, match=message):
            train(TrainConfig.from_hydra(cfg))
    assert not (tmp_path / "results.json").exists()


@pytest.mark.skipif(hub_reachable(), reason="checks the offline behaviour")
def test_hub_model_offline_fails_fast_with_the_fix(tmp_path):
    env = {**os.environ, "SMFEXP_DATA_DIR": str(ROOT / "data")}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "smfexp.train", "model=qwen2.5-0.5b-instruct", "logger=csv",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert time.perf_counter() - t0 < 60
    err = proc.stderr.strip().splitlines()
    assert any("Qwen/Qwen2.5-0.5B-Instruct" in line and "model.path=" in line for line in err)
    assert "Traceback" not in proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and "unreachable" in results["error"]
