"""Resumable runs: periodic checkpoints, a clean stop on SIGTERM/SIGINT, ``resume=auto``.

Periodic checkpoints come every ``checkpoint_every_minutes`` of training, at the first optimizer
step after each interval (:class:`ResumableCheckpoint`): a save costs ~10 s for the 262K-slot
memory and ~33 s for 1M slots on a 2-core CPU, so a fixed step count would either lose much or
spend much of a long run writing. ``checkpoint_every_n_steps`` gives exact points instead
(Lightning's ``ModelCheckpoint(every_n_train_steps=N, save_last=True)``,
:func:`periodic_checkpoint`). Lightning restores the loop counters of a
checkpoint taken at the end of a training batch itself. A checkpoint is only taken right after
an optimizer step, so it never splits a gradient accumulation window, and it holds everything
the next step depends on: what trains (memory rows / LoRA adapter / full weights, see
``FinetuneModule.on_save_checkpoint``), optimizer and scheduler state, selector state, the
position in the data (the DataModule's ``state_dict``) and the RNG streams
(:class:`ResumableCheckpoint`). A resumed run therefore takes exactly the steps the
uninterrupted run would have taken.

What stays custom, and why: Lightning has no "finish this optimizer step, save, then stop" on
SIGTERM/SIGINT (its SLURM handler requeues; a plain signal kills mid-step), and it does not
checkpoint the global RNG streams that dropout and the random selector draw from.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from smfexp.errors import RunInterrupted
from smfexp.utils.configs import plain
from smfexp.utils.io import holds_finished_run, stable_hash

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
KEY_FILE = "run_key.txt"
# keys that do not change what a run computes (where it writes, how it logs, how to resume)
_NOT_IN_KEY = ("resume", "ckpt_path", "paths", "logger", "callbacks", "checkpoint_every_n_steps",
               "checkpoint_every_minutes", "keep_checkpoints", "skip_finished")


# groups whose class is named for readers (``_target_``): the class is not what is computed
_TYPED_GROUPS = ("model", "memory", "retrofit", "background", "eval")


def _drop_off_levers(method: dict[str, Any]) -> None:
    """Leave out method keys that change no step as set (a lever at its off value, and the
    settings only it reads), so runs keyed before the levers existed keep their keys, and
    how often a step's numbers are logged, which changes no step."""
    method.pop("log_selection_every", None)
    for key in ("row_max_change", "learned_loss"):
        if method.get(key, "on") is None:
            method.pop(key)
    for key in ("l2_to_base", "ewc"):
        if method.get(key, 1) == 0:
            method.pop(key)
    if "ewc" not in method:
        method.pop("ewc_batches", None)
    if method.get("fact_weight", 0) == 1:
        method.pop("fact_weight")
    if method.get("replay_k", 1) == 0:
        method.pop("replay_k")
        method.pop("replay_weight", None)
        if "ewc" not in method:  # the Fisher reads the replay's corpus settings
            for key in ("replay_length", "replay_source", "replay_seed"):
                method.pop(key, None)


def run_key(cfg: Any) -> str:
    """Identity of a run's computation: two runs with the same key take the same steps.
    ``cfg``: the composed config (a node, or its resolved plain mapping)."""
    container = copy.deepcopy(plain(cfg))
    assert isinstance(container, dict)
    for group in ("data", "eval"):  # where the data sits is not what is computed
        if isinstance(container.get(group), dict):
            container[group].pop("data_dir", None)
    for group in _TYPED_GROUPS:
        if isinstance(container.get(group), dict):
            container[group].pop("_target_", None)
    if isinstance(container.get("method"), dict):
        _drop_off_levers(container["method"])
    data = container.get("data")
    if isinstance(data, dict) and (data.get("lr_horizon") in (None, data.get("n_facts"))
                                   or data.get("schedule") == "constant"):
        data.pop("lr_horizon", None)  # the same steps as without it: such runs keep their keys
    return stable_hash({k: v for k, v in container.items() if k not in _NOT_IN_KEY})


def find_resume_checkpoint(resume: str | None, runs_root: Path, key: str) -> Path | None:
    """The checkpoint ``resume=`` (or ``ckpt_path=``) points at; None = start fresh.

    ``auto`` picks the newest ``checkpoints/last.ckpt`` under ``runs_root`` written by a run
    with this run ``key``; a run directory or a ``.ckpt`` file can also be given.
    """
    value = resume
    if not value:
        return None
    if str(value) == "auto":
        root = Path(runs_root)
        found = [
            p for p in root.glob(f"**/{CHECKPOINT_DIR}/{LAST}")
            if _read_key(p.parent) == key
            and not holds_finished_run(p.parent.parent)  # kept checkpoints of finished runs
        ]
        if not found:
            log.info("resume=auto: no unfinished run with this config under %s; starting fresh",
                     root)
            return None
        newest = max(found, key=lambda p: p.stat().st_mtime)
        log.info("resume=auto: continuing %s", newest)
        return newest
    path = Path(str(value)).expanduser()
    for candidate in (path, path / CHECKPOINT_DIR / LAST, path / LAST):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"resume={value}: no checkpoint there (a run keeps it in <run dir>/{CHECKPOINT_DIR}/"
        f"{LAST} until it finishes); use resume=auto to find the newest unfinished run"
    )


def _read_key(directory: Path) -> str | None:
    try:
        return (directory / KEY_FILE).read_text().strip()
    except OSError:
        return None


def finished_results(run_dir: Path, key: str) -> dict[str, Any] | None:
    """The results.json of a run in ``run_dir`` that finished with this run key, else None
    (``skip_finished``: a sweep run again in pieces does not redo its finished jobs)."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(results, dict) and results.get("status") == "ok"
    return results if ok and results.get("run_key") == key else None


def other_finished_run(run_dir: Path, key: str) -> str | None:
    """The run key of a finished run in ``run_dir`` with other settings than ``key``, else
    None: writing there would overwrite its results (a lever swept into the directory the
    experiment names by its other settings)."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("status") != "ok":
        return None
    other = results.get("run_key")
    return str(other) if other and other != key else None


def rng_state() -> dict[str, Any]:
    """Every RNG stream a training step can draw from (tensors and tuples: weights_only-safe)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss,
                  cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StreamingCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer without its in-memory copy: a local checkpoint is
    ``torch.save``-d straight into a temporary file beside it, then renamed over it (atomic on
    one filesystem). Lightning's own writer serialises into a ``BytesIO`` first, so a save
    holds the whole checkpoint twice: +7 GB at the peak for SMF's 1M-slot tables, which took a
    1000-fact run from 10 to 17 GB. Remote paths (``s3://`` ...) keep Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # a URL: fsspec's business
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


def periodic_checkpoint(dirpath: Path, every_n_steps: int) -> ModelCheckpoint | None:
    """Lightning's checkpoint every ``every_n_steps`` optimizer steps as ``<dir>/last.ckpt``
    (full state, replaced atomically); None when ``every_n_steps`` is 0."""
    if every_n_steps < 0:
        raise ValueError(f"checkpoint_every_n_steps must be >= 0 (got {every_n_steps})")
    if every_n_steps == 0:
        return None
    return ModelCheckpoint(dirpath=dirpath, every_n_train_steps=every_n_steps, save_top_k=0,
                           save_last=True, enable_version_counter=False)


class ResumableCheckpoint(Callback):
    """On SIGTERM or SIGINT, writes ``<dir>/last.ckpt`` after the current optimizer step and
    stops with :class:`RunInterrupted` (a second signal stops at once); with
    ``every_minutes`` > 0 also writes it at the first optimizer step after each such
    interval of training. Puts the RNG streams and the run key in every checkpoint and
    restores the streams on resume."""

    def __init__(self, dirpath: Path, key: str, every_minutes: float = 0.0) -> None:
        if every_minutes < 0:
            raise ValueError(f"checkpoint_every_minutes must be >= 0 (got {every_minutes})")
        self.dirpath = Path(dirpath)
        self.key = key
        self.every_seconds = 60.0 * every_minutes
        self._saved_at = 0.0  # time.monotonic() of the last save (or of the start)
        self.last_path: Path | None = None
        self._last_step = -1
        self._signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._pending_rng: dict[str, Any] | None = None

    # -- when to save ------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step
        self._saved_at = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        if trainer.is_global_zero:  # after the handlers: its presence means "stoppable"
            self.dirpath.mkdir(parents=True, exist_ok=True)
            (self.dirpath / KEY_FILE).write_text(self.key + "\n")

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # asked twice: stop now, keep the last checkpoint
            raise KeyboardInterrupt
        self._signal = signum
        log.warning("received %s: saving a checkpoint after the current optimizer step "
                    "(send it again to stop at once)", signal.Signals(signum).name)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:  # resumed: the streams continue where they stopped
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # no optimizer step yet (inside an accumulation window)
            return
        self._last_step = step
        if self._signal is not None:
            path = self.save(trainer)
            raise RunInterrupted(self._signal, step, path)
        if self.every_seconds and self._due(trainer):
            self.save(trainer)

    def _due(self, trainer: Trainer) -> bool:
        """Has an interval passed? Rank 0's clock decides for every rank (saving is a
        collective: ranks that disagreed would wait on each other forever)."""
        due = time.monotonic() - self._saved_at >= self.every_seconds
        return bool(trainer.strategy.broadcast(due, src=0))

    def save(self, trainer: Trainer) -> Path:
        path = self.dirpath / LAST
        trainer.save_checkpoint(path, weights_only=False)  # full state; temp file + rename
        self.last_path = path
        self._saved_at = time.monotonic()
        return path

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handlers()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    # -- what goes in ------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["smfexp"] = {"run_key": self.key, "rng": rng_state()}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("smfexp", {})
        if saved.get("run_key") not in (None, self.key):
            log.warning("resuming from a checkpoint written with a different config: steps "
                        "after the resume follow the new config")
        self._pending_rng = saved.get("rng")
