"""Sweeps: the smoke multirun (offline W&B runs + report) and an Optuna sweep."""

from __future__ import annotations

import json
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
