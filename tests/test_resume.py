"""Fault tolerance: kill -9 / SIGTERM and resume, NaN stops, checkpoints hold what trains.

The interrupted runs use the real CLI in a subprocess (signals, exit codes and the files a user
sees); a resumed run must end bit-identical to an uninterrupted one with the same seed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import TINY_MEMORY, TINY_RETROFIT, compose_train

MAX_STEPS = 16
COMMON = [
    "model=tiny", "logger=csv", "callbacks.progress_bar=none", "trainer.precision=32-true",
    "data=medmcqa", "data.eval_size=8", "eval.limit=4", "eval.probes=[]", "eval.progress=false",
    f"trainer.max_steps={MAX_STEPS}", "checkpoint_every_n_steps=2",
]
METHOD_ARGS = {
    "smf": ["method=smf", *TINY_MEMORY, *TINY_RETROFIT],
    "lora": ["method=lora"],  # dropout 0.05: the RNG streams must resume too
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One retrofit for the module's runs; the converted tokenizer from the user cache."""
    from smfexp.utils.io import cache_root

    root = tmp_path_factory.mktemp("resume-cache")
    if (cache_root() / "models").exists():
        (root / "models").symlink_to(cache_root() / "models")
    return root


def _cli(method: str, runs: Path, name: str, data_dir: Path, cache: Path,
         *extra: str) -> subprocess.Popen:
    env = {**os.environ, "SMFEXP_CACHE": str(cache), "WANDB_MODE": "offline"}
    args = [sys.executable, "-m", "smfexp.train", *COMMON, *METHOD_ARGS[method],
            f"paths.data_dir={data_dir}", f"paths.runs_root={runs}",
            f"hydra.run.dir={runs / name}", *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.01)


def _losses(run: Path) -> dict[int, float]:
    rows = csv.DictReader((run / "csv" / "version_0" / "metrics.csv").open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def _trained_tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((run / "trained").rglob("*.safetensors"))
    assert files, f"no trained artifact in {run}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def _assert_same_run(resumed: Path, reference: Path) -> None:
    a = json.loads((resumed / "results.json").read_text())
    b = json.loads((reference / "results.json").read_text())
    assert a["status"] == "ok" and a["resumed_from"], a
    assert a["steps"] == b["steps"] == MAX_STEPS
    assert a["after"] == b["after"] and a["before"] == b["before"]
    ta, tb = _trained_tensors(resumed), _trained_tensors(reference)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    la, lb = _losses(resumed), _losses(reference)
    assert la and all(la[s] == lb[s] for s in la), (la, lb)  # every step after the resume
    if a["method"] == "smf":
        assert a["smf"]["updated_rows_per_layer"] == b["smf"]["updated_rows_per_layer"]
    assert not (resumed / "checkpoints").exists()  # finished runs drop their checkpoints


@pytest.mark.parametrize("method", ["smf", pytest.param("lora", marks=pytest.mark.slow)])
def test_kill_and_sigterm_resume_match_uninterrupted_run(method, tmp_path, data_dir, cache):
    runs = tmp_path / "runs"
    code, err = _finish(_cli(method, runs, "reference", data_dir, cache))
    assert code == 0, err

    # kill -9 as soon as the first periodic checkpoint exists, then resume=auto; this run
    # checkpoints by time (every optimizer step, the interval being ~0), the others by steps
    proc = _cli(method, runs, "killed", data_dir, cache, "checkpoint_every_n_steps=null",
                "checkpoint_every_minutes=1e-9")
    ckpt = runs / "killed" / "checkpoints" / "last.ckpt"
    _wait_for(ckpt, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt, weights_only=True)
    assert 0 < saved["global_step"] < MAX_STEPS, "the kill must land mid-training"
    code, err = _finish(_cli(method, runs, "after_kill", data_dir, cache, "resume=auto"))
    assert code == 0, err
    _assert_same_run(runs / "after_kill", runs / "reference")
    resumed = json.loads((runs / "after_kill" / "results.json").read_text())["resumed_from"]
    assert (runs / "after_kill" / resumed).resolve() == ckpt.resolve()  # relative to the run

    # SIGTERM: a checkpoint after the current step, exit 128+15, results.json "interrupted"
    proc = _cli(method, runs, "terminated", data_dir, cache)
    _wait_for(runs / "terminated" / "checkpoints" / "run_key.txt", proc)  # training started
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 128 + signal.SIGTERM, err
    assert "resume=auto" in err and "Traceback" not in err
    status = json.loads((runs / "terminated" / "results.json").read_text())
    kept = runs / "terminated" / status["checkpoint"]  # relative to the run dir
    assert status["status"] == "interrupted" and kept.is_file()
    assert torch.load(kept, weights_only=True)["global_step"] < MAX_STEPS
    code, err = _finish(_cli(method, runs, "after_term", data_dir, cache,
                             f"resume={runs / 'terminated'}"))
    assert code == 0, err
    _assert_same_run(runs / "after_term", runs / "reference")


def test_checkpoint_holds_only_what_trains(tmp_path, data_dir):
    """A LoRA checkpoint is the adapter + optimizer state, not the frozen backbone."""
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    cfg = compose_train(tmp_path, data_dir, ["method=lora", "checkpoint_every_n_steps=1",
                                             "keep_checkpoints=true"])
    train(TrainConfig.from_hydra(cfg))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["state_dict"] and all("lora_" in k for k in saved["state_dict"])
    assert saved["smfexp_method"] == "lora" and saved["global_step"] == 2


def test_checkpoints_come_by_the_minute_not_every_step(tmp_path, data_dir):
    """The default interval is minutes: a short run writes none (a SIGTERM still would),
    where every optimizer step of a 262K-slot memory would cost ~10 s of writing."""
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    cfg = compose_train(tmp_path, data_dir, ["method=lora", "keep_checkpoints=true"])
    assert cfg.checkpoint_every_minutes == 10 and cfg.checkpoint_every_n_steps is None
    train(TrainConfig.from_hydra(cfg))
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    cfg = compose_train(tmp_path / "b", data_dir, ["method=lora", "keep_checkpoints=true",
                                                   "checkpoint_every_minutes=1e-9"])
    train(TrainConfig.from_hydra(cfg))
    saved = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2  # the last optimizer step's, at its end


def test_a_failed_save_keeps_the_last_checkpoint(tmp_path):
    """Checkpoints stream to disk (no in-memory copy) and stay atomic: a save that fails half
    way leaves the previous checkpoint whole and no partial file behind."""
    from smfexp.checkpointing import StreamingCheckpointIO

    io, path = StreamingCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        io.save_checkpoint({"step": 2, "w": torch.ones(4), "bad": lambda: None}, path)
    kept = torch.load(path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_resume_from_missing_checkpoint_is_a_clear_error(tmp_path, data_dir):
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    cfg = compose_train(tmp_path, data_dir, [f"resume={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match="resume=auto"):
        train(TrainConfig.from_hydra(cfg))


@pytest.mark.parametrize("method", ["lora", "smf"])
def test_nan_stops_the_run_names_the_step_and_keeps_the_last_checkpoint(
        method, tmp_path, data_dir, monkeypatch):
    import smfexp.runner as runner
    from smfexp.errors import NonFiniteError, record_failure, user_error_message
    from smfexp.run_config import TrainConfig

    real_build = runner.build_method
    poison_at = 5  # training micro-batch 5 = optimizer step 3 (grad_accum 2)

    def build_with_fault(cfg, model, tokenizer, **extra):
        # hooked after the retrofit (cached or not): only the finetuning's forwards count
        calls = {"n": 0}

        def poison(module, args, output):
            if not module.training:
                return None
            calls["n"] += 1
            return output * float("nan") if calls["n"] >= poison_at else None

        model.model.norm.register_forward_hook(poison)  # the final hidden state
        return real_build(cfg, model, tokenizer, **extra)

    monkeypatch.setattr(runner, "build_method", build_with_fault)
    cfg = compose_train(tmp_path, data_dir, [*METHOD_ARGS[method], "trainer.max_steps=6",
                                             "checkpoint_every_n_steps=2"])
    with pytest.raises(NonFiniteError, match="step 3") as info:
        runner.train(TrainConfig.from_hydra(cfg))
    record_failure(cfg, info.value, user_error_message(info.value))  # what smfexp.train does
    status = json.loads((tmp_path / "results.json").read_text())
    assert status["status"] == "failed" and "non-finite training loss" in status["error"]
    assert "after" not in status  # never a number
    kept = torch.load(tmp_path / status["checkpoint"], weights_only=True)
    assert kept["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())


def test_resume_auto_picks_the_newest_unfinished_run_with_this_config(tmp_path, data_dir):
    from smfexp.checkpointing import CHECKPOINT_DIR, KEY_FILE, LAST, find_resume_checkpoint, run_key

    cfg = compose_train(tmp_path / "new", data_dir, ["resume=auto",
                                                     f"paths.runs_root={tmp_path / 'runs'}"])
    key = run_key(cfg)

    def run(name: str, key: str, status: str | None, mtime: int) -> Path:
        ckpt = tmp_path / "runs" / name / CHECKPOINT_DIR / LAST
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"x")
        (ckpt.parent / KEY_FILE).write_text(key + "\n")
        if status:
            (ckpt.parent.parent / "results.json").write_text(json.dumps({"status": status}))
        os.utime(ckpt, (mtime, mtime))
        return ckpt

    old = run("old", key, "interrupted", 1_000)
    run("finished", key, "ok", 3_000)  # keep_checkpoints=true: done, nothing to resume
    run("other_config", "0123abcd", None, 4_000)
    runs = tmp_path / "runs"
    assert find_resume_checkpoint("auto", runs, key) == old
    newer = run("killed", key, None, 2_000)
    assert find_resume_checkpoint("auto", runs, key) == newer
    assert find_resume_checkpoint(None, runs, key) is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_scoring_before_training_at_once(signum):
    """Scoring can take minutes; a stop request must not wait for it to finish."""
    from smfexp.callbacks.forgetting import signals_stop_scoring
    from smfexp.errors import RunInterrupted

    before = signal.getsignal(signum)
    with pytest.raises(RunInterrupted, match="while scoring") as info, \
            signals_stop_scoring(stop_on_first=True):
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises in the main thread long before this ends
    assert info.value.signum == signum and info.value.checkpoint is None
    assert signal.getsignal(signum) is before  # handlers restored


def test_signal_while_scoring_trained_model_needs_a_second_one(caplog):
    """After training the weights are not saved yet: one signal warns, the second stops."""
    from smfexp.callbacks.forgetting import signals_stop_scoring
    from smfexp.errors import RunInterrupted

    with signals_stop_scoring(stop_on_first=False):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the handler ran and returned
    assert "send it again" in caplog.text
    with pytest.raises(RunInterrupted), signals_stop_scoring(stop_on_first=False):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
