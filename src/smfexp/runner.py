"""Build one experiment from its config and run it: the body of ``smfexp.train``.

Order matters for the user: the config is read and checked once (:mod:`smfexp.run_config`: a
typo fails in a second, before any model loads), then model, data, method, Trainer,
before/after scoring, results.json - each built from its typed piece of the config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from smfexp.callbacks.forgetting import ForgettingCallback
from smfexp.callbacks.nested import NestedStreamCallback
from smfexp.callbacks.stream import StreamProbeCallback
from smfexp.checkpointing import (
    CHECKPOINT_DIR,
    ResumableCheckpoint,
    StreamingCheckpointIO,
    find_resume_checkpoint,
    finished_results,
    other_finished_run,
    periodic_checkpoint,
)
from smfexp.eval import EvalConfig
from smfexp.eval.item_scores import END, point_json, write_item_scores
from smfexp.loggers import build_loggers, finish_loggers
from smfexp.methods.base import FinetuneModule
from smfexp.models.loading import load_model
from smfexp.objective import objective
from smfexp.run_config import Target, TrainConfig
from smfexp.utils.io import atomic_write_json, stable_hash
from smfexp.utils.precision import resolve_precision

log = logging.getLogger(__name__)


def build_method(method: Target, model: torch.nn.Module, tokenizer: Any,
                 **extra: Any) -> FinetuneModule:
    """The LightningModule of the ``method`` group: its config is exactly its constructor
    arguments; ``extra`` are what its stages built (e.g. background statistics)."""
    return method.build(model=model, tokenizer=tokenizer, **extra)


def run_metadata(run: TrainConfig, module: FinetuneModule) -> dict[str, Any]:
    """Name, group (the sweep) and tags of a job, for experiment trackers."""
    method, selector = module.method_name, getattr(module, "selector", None)
    group = None
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = Path(hc.sweep.dir).name
    except ValueError:  # not inside a Hydra app (tests, notebooks)
        pass
    data_name = run.data.kwargs.get("name")
    tags = [t for t in (method, selector, data_name, run.model.name) if t]
    name = "-".join(str(t) for t in (method, selector, f"s{run.seed}") if t)
    config = {"method": method, "selector": selector, "data": data_name,
              "model": run.model.name, "seed": run.seed, "config": run.resolved}
    return {"group": group, "tags": tags, "name": name, "config": config}


def summary_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """Flat ``before/<probe>/<metric>`` ... keys (the names the W&B panels use)."""
    flat: dict[str, Any] = {}
    for section in ("before", "after", "delta", "rel_delta_pct"):
        for probe, metrics in (results.get(section) or {}).items():
            for metric, value in metrics.items():
                flat[f"{section}/{probe}/{metric}"] = value
    beyond = results.get("target_beyond_heldout") or {}
    for metric, value in (beyond.get("delta") or {}).items():
        flat[f"beyond_heldout/target/{metric}"] = value
    for key in ("method", "selector", "seed", "model", "protocol", "status", "objective"):
        if results.get(key) is not None:
            flat[key] = results[key]
    return flat


def build_callbacks(progress_bar: str) -> list[L.Callback]:
    """Lightning's tqdm bar (the one progress-bar library of the project), or none."""
    return [TQDMProgressBar()] if progress_bar == "tqdm" else []


def build_stream_callback(eval_cfg: EvalConfig, datamodule: Any, tokenizer: Any,
                          forgetting: ForgettingCallback,
                          accelerator: str) -> StreamProbeCallback | None:
    """Probe scores along the stream when ``eval.every_n_facts`` is set (else None), on the
    first rows of the ones the before/after scoring uses."""
    if not eval_cfg.every_n_facts:
        return None
    precision = eval_cfg.resolved(accelerator).stream_precision
    facts_seen = getattr(datamodule, "facts_seen", lambda steps: steps)
    probes = eval_cfg.stream_probes
    return StreamProbeCallback(eval_cfg, datamodule.target, tokenizer,
                               forgetting.eval_cfg.probes if probes is None else probes,
                               eval_cfg.every_n_facts, facts_seen,
                               getattr(datamodule, "steps_per_fact", 1), precision,
                               probe_rows=lambda: forgetting.probe_rows,
                               cache_start=forgetting.cached_start_scores)


def relative_to(path: Path, run_dir: Path) -> str:
    """``path`` as results.json records it: relative to the run dir (the file's own folder),
    so results stay true when the run dir moves to another machine or checkout."""
    return os.path.relpath(Path(path).resolve(), Path(run_dir).resolve())


def _after_scores(errors: dict[str, str], step: str, run: Callable[[], Any]) -> Any:
    """Run one step that comes after the scores; a failure is logged and kept in ``errors``
    (results.json ``errors``) instead of throwing the scores away."""
    try:
        return run()
    except Exception as err:
        log.exception("%s failed after the run was scored; the scores are kept", step)
        errors[step] = f"{type(err).__name__}: {err}"
        return None


def build_nested_callback(eval_cfg: EvalConfig, datamodule: Any,
                          forgetting: ForgettingCallback) -> NestedStreamCallback | None:
    """Scores after the first N facts and per-quarter retention (fact streams only), when
    ``eval.nested_at`` or ``eval.earlier_facts`` asks for them."""
    if not (eval_cfg.nested_at or eval_cfg.earlier_facts):
        return None
    n_facts = getattr(datamodule, "n_facts", None)
    if n_facts is None:  # eval=facts is the default; other data has no stream to nest
        log.info("eval.nested_at / eval.earlier_facts apply to fact streams only; not scored")
        return None
    return NestedStreamCallback(forgetting, n_facts * getattr(datamodule, "passes", 1),
                                getattr(datamodule, "steps_per_fact", 1), datamodule.facts_seen,
                                eval_cfg.nested_at, eval_cfg.earlier_facts)


def scoring_seconds(results: dict[str, Any]) -> float:
    """Seconds this process spent scoring: the before and after passes, the stream's points
    and the nested points (the share of a run's wall time that scoring takes is a budget)."""
    passes = list((results.get("eval_seconds") or {}).values())
    passes += [p.get("seconds") for p in (results.get("stream") or {}).get("points", [])]
    passes += [n.get("seconds") for n in (results.get("nested") or {}).values()
               if isinstance(n, dict)]
    return float(sum(s for s in passes if isinstance(s, int | float)))


def train(run: TrainConfig) -> dict[str, Any]:
    """Run one experiment from its checked config (``TrainConfig.from_hydra``, at the entry
    point); returns (and writes) the results.json content."""
    t_start = time.perf_counter()
    output_dir = run.paths.output_dir
    done = finished_results(output_dir, run.key) if run.skip_finished else None
    if done is not None:
        log.info("%s already holds this run's results (skip_finished=true)", output_dir)
        return done
    other = other_finished_run(output_dir, run.key)
    if other is not None:
        raise FileExistsError(
            f"{output_dir} holds a finished run with other settings (run key {other}; this "
            f"run's is {run.key}): its results would be overwritten. Give this run its own "
            "directory (hydra.run.dir=... or hydra.sweep.subdir=..., e.g. naming the lever you "
            "changed), or delete that directory to replace the run")
    resume_from = find_resume_checkpoint(run.resume, run.paths.runs_root, run.key)
    accelerator = str(run.trainer.get("accelerator"))
    eval_cfg = run.eval.resolved(accelerator)
    L.seed_everything(run.seed, workers=True)

    t0 = time.perf_counter()
    model, tokenizer = load_model(run.model)
    load_seconds = time.perf_counter() - t0
    datamodule = run.data.build(tokenizer=tokenizer)
    datamodule.setup("fit")
    prepared = run.method.cls.prepare(run.stages, model, tokenizer)
    module = build_method(run.method, model, tokenizer, **prepared.kwargs)

    score_key = {
        "model": dataclasses.asdict(run.model),
        # what is scored, not where the data sits or how it is shown
        "eval": {k: v for k, v in eval_cfg.to_dict().items() if k not in ("progress", "data_dir")},
        "target": [datamodule.target.probe, stable_hash(datamodule.target.rows)],
        "target_subset": "evenly_spaced",  # eval.limit rows over the stream (was: the first)
    }
    if datamodule.target.variants:  # keys of older caches stay valid without variants
        score_key["variants"] = stable_hash(datamodule.target.variants)
    forgetting = ForgettingCallback(eval_cfg, datamodule.target, tokenizer,
                                    cache_key=score_key, stage_key=prepared.stage)
    trainer_kwargs = dict(run.trainer)
    trainer_kwargs.update(module.trainer_settings())  # accumulation and clipping: the method's
    if isinstance(trainer_kwargs.get("strategy"), dict):  # a Lightning strategy's _target_
        trainer_kwargs["strategy"] = hydra.utils.instantiate(trainer_kwargs["strategy"])
    trainer_kwargs["precision"] = resolve_precision(trainer_kwargs.get("precision", "auto"),
                                                    accelerator)
    # checkpoint_every_n_steps, when set, replaces the interval in minutes
    minutes = 0.0 if run.checkpoint_every_n_steps else run.checkpoint_every_minutes
    checkpointer = ResumableCheckpoint(output_dir / CHECKPOINT_DIR, run.key, minutes)
    periodic = periodic_checkpoint(output_dir / CHECKPOINT_DIR, run.checkpoint_every_n_steps)
    stream = build_stream_callback(eval_cfg, datamodule, tokenizer, forgetting, accelerator)
    nested = build_nested_callback(eval_cfg, datamodule, forgetting)
    callbacks = [forgetting, *([stream] if stream else []), *([nested] if nested else []),
                 checkpointer,
                 *([periodic] if periodic else []), *build_callbacks(run.progress_bar)]
    trainer_kwargs["enable_checkpointing"] = periodic is not None  # else Lightning adds its own
    loggers = build_loggers(run.loggers, run_metadata(run, module))
    trainer = L.Trainer(**trainer_kwargs, logger=loggers, callbacks=callbacks,
                        default_root_dir=str(output_dir), plugins=[StreamingCheckpointIO()],
                        enable_progress_bar=run.progress_bar != "none")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # our sampler re-enters the epoch at the checkpointed batch (SFTDataModule.state_dict)
        warnings.filterwarnings("ignore", message=".*your dataloader is\\s+not resumable")
        # SMF steps its optimizer itself; the state after the step is what a resume continues
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        # a baseline's step of a fact already learned (method.learned_loss) returns None:
        # Lightning's documented way to skip it
        warnings.filterwarnings("ignore", message=".*`training_step` returned `None`")
        trainer.fit(module, datamodule=datamodule,
                    ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
    fit_seconds = time.perf_counter() - t0

    if not trainer.is_global_zero:  # other DDP ranks: rank 0 writes the outputs
        return {}
    results = {
        "status": "ok",
        "method": module.method_name,
        "selector": getattr(module, "selector", None),
        "seed": run.seed,
        "model": run.model.name,
        "data": datamodule.info,
        "protocol": eval_cfg.protocol,
        "precision": str(trainer.precision),
        "scoring_precision": eval_cfg.precision,
        "steps": trainer.global_step,
        "trainable_params": module.trainable_params,
        "total_params": module.total_params,
        **forgetting.results,
        "wall_seconds": {
            "total": time.perf_counter() - t_start,
            "model_load": load_seconds,
            "fit_with_eval": fit_seconds,
        },
        "stream": stream.results if stream else None,
        **(nested.results if nested else {}),
        "trained_artifact": None,
        "retrofit": None,
        **prepared.results,
        "resumed_from": relative_to(resume_from, output_dir) if resume_from else None,
        "run_key": run.key,
    }
    results["wall_seconds"]["scoring"] = scoring_seconds(results)
    # The scores are what the run was for: they reach results.json first, and a step after
    # them that fails (a summary number, saving, a logger) is recorded beside them.
    errors: dict[str, str] = {}
    _after_scores(errors, "extra_results",
                  lambda: results.update(getattr(module, "extra_results", dict)()))
    results["objective"] = _after_scores(
        errors, "objective", lambda: objective(results, run.forgetting_penalty))
    atomic_write_json(output_dir / "results.json", results)
    _after_scores(errors, "items", lambda: write_item_scores(output_dir, {
        END: point_json(forgetting.before_items, forgetting.after_items),
        **(nested.items if nested else {})}, datamodule.target.heldout_probe))
    if run.save_trained:
        results["trained_artifact"] = _after_scores(
            errors, "save_trained",
            lambda: relative_to(module.save_trained(output_dir / "trained"), output_dir))
    if not run.keep_checkpoints and "save_trained" not in errors:
        shutil.rmtree(output_dir / CHECKPOINT_DIR, ignore_errors=True)  # what was trained stays
    _after_scores(errors, "loggers",
                  lambda: finish_loggers(loggers, summary_metrics(results), results))
    if errors:
        results["errors"] = errors
    atomic_write_json(output_dir / "results.json", results)
    log.info("results written to %s", output_dir / "results.json")
    return results
