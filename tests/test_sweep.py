"""Sweeps: the smoke multirun (offline W&B runs + report) and an Optuna sweep."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    from smfexp.utils.io import cache_root

    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    if (cache_root() / "models").exists() and not (cache / "models").exists():
        (cache / "models").symlink_to(cache_root() / "models")
    env = {**os.environ, "SMFEXP_CACHE": str(cache), "WANDB_MODE": "offline",
           "SMFEXP_DATA_DIR": str(ROOT / "data")}
    env.pop("WANDB_API_KEY", None)
    return env


def _train(args: list[str], tmp_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smfexp.train", "--multirun", *args],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout)


def _wandb_records(run_dir: Path) -> list[dict]:
    """Records of an offline W&B run, read with W&B's own inspector."""
    files = list(run_dir.glob("wandb/offline-run-*/*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run in {run_dir}, found {files}"
    wandb = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb), "leet", "inspect", "--json", str(files[0])],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_smoke_multirun_logs_wandb_offline_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _train(["experiment=smoke", "method=smf_kl,lora,full", "seed=0,1",
                   f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "results.json").exists())
    assert len(jobs) == 6
    for job in jobs:
        results = json.loads((job / "results.json").read_text())
        assert results["status"] == "ok"
        records = _wandb_records(job)
        run = next(r["run"] for r in records if r.get("type") == "run")
        assert run.get("runGroup", run.get("run_group")) == sweep.name
        assert results["method"] in run.get("tags", [])
        summary: dict = {}
        for r in records:
            if r.get("type") == "summary":
                summary.update(r["summary"].get("update", {}))
        for section in ("before", "after", "delta"):
            key = f"{section}/target/acc"
            assert key in summary, f"{key} missing from the W&B summary of {job.name}"
            assert summary[key] == pytest.approx(results[section]["target"]["acc"])
    report = subprocess.run([sys.executable, "-m", "smfexp.report", str(sweep)], cwd=ROOT,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    out = sweep / "report"
    assert (out / "summary.md").read_text().count("| smf |") >= 1
    for png in ("pareto.png", "training_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_optuna_sweep_runs_three_trials(tmp_path):
    sweep = tmp_path / "optuna"
    proc = _train(["experiment=smoke", "hparams_search=smf_optuna", "logger=csv",
                   "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3",
                   f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [p for p in sweep.iterdir() if (p / "results.json").exists()]
    assert len(trials) == 3
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    objectives = [json.loads((t / "results.json").read_text())["objective"] for t in trials]
    assert best["best_value"] == pytest.approx(max(objectives))


FRONTIER_TINY = [
    "model=tiny", "logger=csv", "callbacks.progress_bar=none", "trainer.precision=32-true",
    "data.n_facts=4", "data.phrasings_per_step=2", "data.steps_per_fact=1",
    "eval.limit=4", "eval.probes=[triviaqa,wikitext]", "eval.limits.wikitext=1",
    "eval.max_length=256", "eval.every_n_facts=2", "eval.stream_limit=2", "eval.progress=false",
    "eval.stream_probes=[wikitext]",
    "memory.layers=[1,2]", "memory.n_keys=16", "memory.knn=4", "memory.k_dim=32",
    "memory.heads=2", "retrofit.batch_size=4", "retrofit.max_length=64",
    "retrofit.parts=[wiki]", "retrofit.heldout_docs=4", "retrofit.heldout_batches=1",
    "background.n=16", "background.max_length=32",
]


def test_frontier_sweeps_share_one_directory_and_report_matched_learning(tmp_path):
    """`make run` in miniature: each method's grid into one directory, then one report."""
    sweep = tmp_path / "frontier"
    grids = {"smf": ["method.lr=100,300", "method.top_t=4"], "lora": ["method.lr=1e-3"],
             "full": ["method.lr=1e-4"]}
    for method, grid in grids.items():
        proc = _train([f"experiment=frontier_{method}", *FRONTIER_TINY, *grid,
                       f"hydra.sweep.dir={sweep}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.relative_to(sweep).as_posix() for p in sweep.glob("*/*/results.json"))
    assert runs == ["full/0/results.json", "lora/0/results.json", "smf/0/results.json",
                    "smf/1/results.json"]
    for path in sweep.glob("*/*/results.json"):
        results = json.loads(path.read_text())
        assert results["status"] == "ok" and results["data"]["batching"] == "per_fact"
        assert [p["facts"] for p in results["stream"]["points"]] == [0, 2, 4]
        assert set(results["stream"]["points"][0]["scores"]) == {"target", "wikitext"}
    # every run starts from the base model (LoRA's B = 0, SMF's memory is empty): the draw's own
    # before-scores, the probes' before-scores and the stream's first point are cached once each
    # and serve all four runs
    assert len(list((tmp_path / "cache" / "scores").iterdir())) == 3
    report = subprocess.run([sys.executable, "-m", "smfexp.report", str(sweep)], cwd=ROOT,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    summary = (sweep / "report" / "summary.md").read_text()
    assert "matched learning" in summary.lower()
    for png in ("frontier.png", "stream.png"):
        assert (sweep / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_optuna_search_on_new_facts_optimises_a_finite_objective(tmp_path):
    """New facts start at exact match 0 (a relative gain is undefined): the objective is in
    points of learning, so the sampler gets numbers, not NaN."""
    sweep = tmp_path / "optuna_facts"
    proc = _train(["experiment=frontier_smf", *FRONTIER_TINY, "hparams_search=smf_optuna",
                   "hydra.sweeper.params={method.lr: 'tag(log, interval(30.0, 3000.0))'}",
                   "method.top_t=4", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}"],
                  tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = list(sweep.glob("smf/*/results.json"))  # the frontier experiment's subdirs
    assert len(trials) == 2
    for trial in trials:
        results = json.loads(trial.read_text())
        assert results["status"] == "ok" and results["before"]["target"]["exact_match"] == 0
        assert math.isfinite(results["objective"])
