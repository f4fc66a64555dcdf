"""End to end on the fact stream: real Lightning runs of the tiny model through the runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from smfexp.errors import record_failure, user_error_message

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["memory.layers=[1,2]", "memory.n_keys=16", "memory.knn=4", "memory.k_dim=32",
        "memory.heads=2", "retrofit.steps=3", "retrofit.batch_size=4", "retrofit.max_length=64",
        "retrofit.parts=[wiki]", "retrofit.heldout_docs=4", "retrofit.heldout_batches=1",
        "background.n=16", "background.max_length=32"]


def _compose(tmp_path: Path, data_dir: Path, name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "model=tiny", "data=triviaqa_facts", "data.n_facts=4", "data.phrasings_per_step=2",
            "data.steps_per_fact=1",
            "logger=csv", "callbacks.progress_bar=none", "trainer.precision=32-true",
            "eval.limit=4", "eval.probes=[triviaqa,retention]", "eval.limits.retention=2",
            "eval.progress=false", f"paths.data_dir={data_dir}", *overrides])
    cfg.paths.output_dir = str(tmp_path / name)
    return cfg


def _run(tmp_path: Path, data_dir: Path, name: str, overrides: list[str]) -> dict:
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    results = train(TrainConfig.from_hydra(_compose(tmp_path, data_dir, name, overrides)))
    on_disk = json.loads((tmp_path / name / "results.json").read_text())
    assert on_disk["status"] == "ok"
    return results


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMFEXP_CACHE", str(tmp_path / "cache"))


def test_smf_stream_writes_diagnostics_phrasings_and_stream_points(tmp_path, data_dir):
    results = _run(tmp_path, data_dir, "smf", ["method=smf", "selector=tfidf", "method.top_t=4",
                                               "eval.every_n_facts=2", *TINY])
    assert results["steps"] == 4 and results["data"]["batching"] == "per_fact"
    for section in ("before", "after"):
        assert {"target", "target_seen", "triviaqa", "retention"} <= set(results[section])
    smf = results["smf"]
    assert len(smf["diagnostics"]) == 2  # one per memory layer
    for layer in smf["diagnostics"]:
        assert 0 <= layer["overlap"] <= 1 and 0 <= layer["touched_background_share"] <= 1
        assert 0 <= layer["fact_background_share"] <= layer["touched_background_share"] + 1e-9
    usage = smf["background_key_usage"][0]
    assert smf["background_unit"] == "sequence" and 0 <= usage["idf_below_0.1"] <= 1
    facts = [p["facts"] for p in results["stream"]["points"]]
    assert facts == [0, 2, 4]  # start, every 2 facts, end (the end point is not repeated)
    assert "target" in results["stream"]["points"][-1]["scores"]


@pytest.mark.parametrize("overrides", [["method=lora"], ["method=full", "data.batching=mixed"]])
def test_baselines_and_mixed_batches_run_on_the_same_stream(tmp_path, data_dir, overrides):
    results = _run(tmp_path, data_dir, "run", overrides)
    assert results["steps"] == 4  # 4 facts, one step each (mixed: the same examples)
    assert results["data"]["batching"] == ("mixed" if len(overrides) > 1 else "per_fact")
    assert "target_seen" in results["after"]


def test_scores_reach_results_json_when_a_step_after_them_fails(tmp_path, data_dir, monkeypatch):
    """A 50-minute run must not lose its scores because a summary number or a save failed."""
    import smfexp.runner
    from smfexp.methods.full import FullFinetune

    def broken_objective(*args, **kwargs):
        raise KeyError("target_seen")

    def broken_save(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(smfexp.runner, "objective", broken_objective)
    monkeypatch.setattr(FullFinetune, "save_trained", broken_save)
    results = _run(tmp_path, data_dir, "run", ["method=full"])
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["after"]["target"] == results["after"]["target"]
    assert on_disk["objective"] is None and on_disk["trained_artifact"] is None
    assert set(on_disk["errors"]) == {"objective", "save_trained"}
    assert "disk full" in on_disk["errors"]["save_trained"]


def test_a_sweep_run_again_skips_its_finished_jobs(tmp_path, data_dir):
    """skip_finished: a job whose directory holds results of this very config returns them
    (sweeps run in pieces across sittings); another config is refused there, before it
    trains, so the finished results stay as they were (a lever needs its own directory)."""
    first = _run(tmp_path, data_dir, "job", ["method=full", "skip_finished=true"])
    again = _run(tmp_path, data_dir, "job", ["method=full", "skip_finished=true"])
    assert again["wall_seconds"] == first["wall_seconds"]  # not run a second time
    written = (tmp_path / "job" / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match=r"hydra\.sweep\.subdir") as refused:
        _run(tmp_path, data_dir, "job", ["method=full", "method.lr=3e-5", "skip_finished=true"])
    # what smfexp.train does with any failure: it must not record it over the finished run
    record_failure(_compose(tmp_path, data_dir, "job", ["method=full", "method.lr=3e-5"]),
                   refused.value, user_error_message(refused.value))
    assert (tmp_path / "job" / "results.json").read_bytes() == written
    other = _run(tmp_path, data_dir, "job_lr3e-5", ["method=full", "method.lr=3e-5",
                                                    "skip_finished=true"])
    assert other["run_key"] != first["run_key"]
