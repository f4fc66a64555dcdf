"""Build one experiment from a composed config and run it: the body of ``smfexp.train``.

Order matters for the user: cheap config checks first (a typo fails in a second, before any
model loads), then model, data, method, Trainer, before/after scoring, results.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from smfexp.callbacks.forgetting import ForgettingCallback
from smfexp.eval import EvalConfig
from smfexp.models.loading import load_model
from smfexp.utils.io import atomic_write_json

log = logging.getLogger(__name__)

# method config keys that configure the Trainer/DataModule rather than the LightningModule
_NON_MODULE_KEYS = ("name", "epochs", "batch_size", "grad_accum", "grad_clip", "uses_selector")


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """``auto``: bf16-mixed on a GPU with bf16, float32 elsewhere; anything else is kept."""
    if str(precision) != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() \
            and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_method(cfg: DictConfig, model: torch.nn.Module, tokenizer: Any) -> L.LightningModule:
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    assert isinstance(method_cfg, dict)
    for key in _NON_MODULE_KEYS:
        method_cfg.pop(key, None)
    return hydra.utils.instantiate(method_cfg, model=model, tokenizer=tokenizer,
                                   _convert_="all")


def build_loggers(cfg: DictConfig) -> list[Logger]:
    loggers: list[Logger] = []
    for name, conf in (cfg.get("logger") or {}).items():
        if name == "csv":
            loggers.append(CSVLogger(**conf))
        elif conf is not None and "_target_" in conf:
            loggers.append(hydra.utils.instantiate(conf))
    return loggers


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    kind = cfg.callbacks.get("progress_bar", "tqdm")
    if kind == "rich":
        return [RichProgressBar()]
    if kind == "tqdm":
        return [TQDMProgressBar()]
    return []


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment; returns (and writes) the results.json content."""
    t_start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    eval_cfg = EvalConfig.from_config(cfg.eval)  # validates before anything heavy
    L.seed_everything(cfg.seed, workers=True)

    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg.model)
    load_seconds = time.perf_counter() - t0
    datamodule = hydra.utils.instantiate(cfg.data, tokenizer=tokenizer, _convert_="all")
    datamodule.setup("fit")
    module = build_method(cfg, model, tokenizer)

    forgetting = ForgettingCallback(eval_cfg, datamodule.target, tokenizer)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer_kwargs, dict)
    trainer_kwargs["precision"] = resolve_precision(trainer_kwargs.get("precision", "auto"),
                                                    str(trainer_kwargs.get("accelerator")))
    callbacks = [forgetting, *build_callbacks(cfg)]
    enable_bar = cfg.callbacks.get("progress_bar", "tqdm") != "none"
    trainer = L.Trainer(**trainer_kwargs, logger=build_loggers(cfg), callbacks=callbacks,
                        default_root_dir=str(output_dir), enable_progress_bar=enable_bar)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - t0

    saved = None
    if cfg.get("save_trained", True):
        saved = str(module.save_trained(output_dir / "trained"))

    results = {
        "status": "ok",
        "method": cfg.method.name,
        "selector": cfg.selector.name if cfg.method.get("uses_selector") else None,
        "seed": cfg.seed,
        "model": cfg.model.name,
        "data": datamodule.info,
        "protocol": eval_cfg.protocol,
        "precision": str(trainer.precision),
        "steps": trainer.global_step,
        "trainable_params": module.trainable_params,
        "total_params": module.total_params,
        **forgetting.results,
        "wall_seconds": {
            "total": time.perf_counter() - t_start,
            "model_load": load_seconds,
            "fit_with_eval": fit_seconds,
        },
        "trained_artifact": saved,
        "output_dir": str(output_dir),
    }
    results.update(getattr(module, "extra_results", dict)())
    atomic_write_json(output_dir / "results.json", results)
    log.info("results written to %s", output_dir / "results.json")
    return results
