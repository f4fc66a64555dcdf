"""Run stage 1 once per (model, memory, corpus, budget, seed) and reuse it across a sweep."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smfexp.data.modules import BackgroundDataModule
from smfexp.memory import MemoryConfig, load_memory
from smfexp.memory.attach import detach_memory, memory_config
from smfexp.methods.retrofit import RetrofitModule, calibrate_query_norms, mean_loss
from smfexp.utils.io import (
    atomic_directory,
    atomic_write_json,
    cache_root,
    manifest_problem,
    stable_hash,
    write_manifest,
)
from smfexp.utils.precision import resolve_precision

log = logging.getLogger(__name__)

REPORT = "retrofit.json"


def _plain(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        out = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(out, dict)
        return out
    return dict(cfg)


def retrofit_key(model_cfg: Any, memory: MemoryConfig, retro: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes the retrofitted weights (not where outputs go, not progress)."""
    model = _plain(model_cfg)
    budget = {
        k: retro[k]
        for k in (
            "steps",
            "lr",
            "batch_size",
            "grad_accum",
            "max_length",
            "warmup_steps",
            "weight_decay",
            "parts",
            "max_docs",
            "heldout_docs",
            "seed",
            "precision",
        )
        if k in retro
    }
    if retro.get("steps") == 0:  # no training: the calibration pass is the whole stage
        budget["calibration_batches"] = retro.get("calibration_batches", 8)
    described = memory.to_dict()
    if described.get("value_init") == "normal":  # the default: keys of older caches stay valid
        del described["value_init"]
    return {
        "model": {k: model.get(k) for k in ("name", "source", "path", "revision", "tiny", "seed")},
        "memory": described,
        "retrofit": budget,
    }


def retrofit_dir(key: dict[str, Any]) -> Path:
    return cache_root() / "retrofit" / f"{key['model']['name']}-{stable_hash(key)}"


def _load_cached(
    model: PreTrainedModel, directory: Path, key: dict[str, Any]
) -> tuple[dict[str, Any] | None, str]:
    """The cached report with the memories loaded into ``model``, or (None, why not).

    Never raises: a truncated/garbage safetensors file (``SafetensorError`` is no OSError),
    malformed JSON or a foreign key all mean "rebuild".
    """
    problem = manifest_problem(directory, key)
    if problem not in (None, "no manifest"):
        return None, problem
    try:
        report = json.loads((directory / REPORT).read_text(encoding="utf-8"))
        if not isinstance(report, dict) or report.get("key") != json.loads(json.dumps(key)):
            return None, "it was built for another config"
        load_memory(model, directory)
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"
    if problem == "no manifest":  # written before manifests: loaded fine, so record one now
        with contextlib.suppress(OSError):  # a read-only cache is still usable
            write_manifest(directory, key)
    return report, ""


def ensure_retrofit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_cfg: Any,
    memory_cfg: Any,
    retrofit_cfg: Any,
    data_dir: str | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Leave ``model`` with retrofitted memories; train them only if no cached copy exists.

    Returns the checkpoint directory and its report (held-out background loss before/after).
    """
    memory = MemoryConfig.from_config(_plain(memory_cfg))
    retro = _plain(retrofit_cfg)
    n_blocks = model.config.num_hidden_layers
    memory.validate(n_blocks)
    key = retrofit_key(model_cfg, memory, retro)
    directory = retrofit_dir(key)
    if directory.exists():
        report, problem = _load_cached(model, directory, key)
        if report is not None:
            log.info("reusing retrofit %s", directory)
            return directory, report
        log.warning(
            "retrofit cache %s failed its integrity check (%s); rebuilding", directory, problem
        )
        if memory_config(model) is not None:  # a half-loaded memory must not skew base_loss
            detach_memory(model)
    return directory, _train_retrofit(
        model, tokenizer, memory, retro, key, directory, data_dir, progress
    )


def _train_retrofit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    memory: MemoryConfig,
    retro: dict[str, Any],
    key: dict[str, Any],
    directory: Path,
    data_dir: str | None,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    L.seed_everything(retro.get("seed", 0), workers=True)
    data = BackgroundDataModule(
        tokenizer,
        data_dir=data_dir,
        batch_size=retro["batch_size"],
        max_length=retro["max_length"],
        parts=retro.get("parts"),
        max_docs=retro.get("max_docs"),
        heldout_docs=retro.get("heldout_docs", 200),
        shuffle_seed=retro.get("seed", 0),
    )
    data.setup()
    heldout_batches = retro.get("heldout_batches", 8)
    precision = resolve_precision(retro.get("precision", "auto"))
    base_loss = mean_loss(model, data.heldout_dataloader(), heldout_batches, precision)
    if memory_config(model) is not None:
        detach_memory(model)
    module = RetrofitModule(
        model,
        tokenizer,
        memory=memory,
        lr=retro["lr"],
        weight_decay=retro.get("weight_decay", 0.0),
        warmup_steps=retro.get("warmup_steps", 0),
        schedule="cosine",
    )
    empty = memory.value_init == "zero"
    # an empty memory adds exactly 0: the attached model *is* the base model
    attached_loss = base_loss if empty else mean_loss(model, data.heldout_dataloader(),
                                                      heldout_batches, precision)
    steps = 0
    if retro["steps"] > 0:
        trainer = L.Trainer(
            max_steps=retro["steps"],
            accumulate_grad_batches=retro.get("grad_accum", 1),
            gradient_clip_val=1.0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            precision=precision,
            max_epochs=-1,
            callbacks=[TQDMProgressBar()] if progress else [],
        )
        log.info("retrofitting memories (%d steps); cached afterwards at %s", retro["steps"],
                 directory)
        trainer.fit(module, train_dataloaders=data.train_dataloader())
        steps = trainer.global_step
        after_loss = mean_loss(model, data.heldout_dataloader(), heldout_batches, precision)
    else:  # no training: only the query normalisers' statistics, from background text
        tokens = calibrate_query_norms(model, data.train_dataloader(),
                                       retro.get("calibration_batches", 8))
        log.info("memory query statistics calibrated on %d background tokens (retrofit.steps=0)",
                 tokens)
        after_loss = attached_loss if empty else mean_loss(
            model, data.heldout_dataloader(), heldout_batches, precision)
    report = {
        "key": key,
        "heldout_loss": {
            "base_model": base_loss,
            "attached_untrained": attached_loss,
            "retrofitted": after_loss,
        },
        "steps": steps,
        "trainable_params": module.trainable_params,
        "precision": str(precision),
        "seconds": time.perf_counter() - t0,
        "corpus": data.info,
    }
    with atomic_directory(directory) as tmp:
        module.save_trained(tmp)
        atomic_write_json(tmp / REPORT, report)
        write_manifest(tmp, key)  # last: sizes + checksums, verified on every reuse
    log.info(
        "retrofit done: held-out background loss base %.4f -> retrofitted %.4f (%.0f s)",
        base_loss,
        after_loss,
        report["seconds"],
    )
    return report
