"""Stage 1 of SMF, the retrofit: heal freshly attached memories on general text with the
backbone frozen (or, with ``retrofit.steps=0``, only calibrate their query statistics), once
per (model, memory, corpus, budget, seed); every job of a sweep reuses the cached result."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smfexp.data.sources import BACKGROUND_PARTS
from smfexp.memory import MemoryConfig, attach_memory, freeze_backbone, load_memory, save_memory
from smfexp.memory.attach import (
    detach_memory,
    forward_through_memories,
    memory_config,
    memory_modules,
    set_sparse_values,
)
from smfexp.models.loading import ModelSpec
from smfexp.stages.background import background_data, check_parts
from smfexp.training.module import CausalLMModule
from smfexp.utils.cache import load_or_build
from smfexp.utils.configs import from_node, require_int, require_number
from smfexp.utils.io import atomic_write_json
from smfexp.utils.modes import eval_mode
from smfexp.utils.precision import autocast_for, resolve_precision

log = logging.getLogger(__name__)

REPORT = "retrofit.json"
# what changes the retrofitted weights (the cache key); calibration_batches only without steps
KEY_FIELDS = ("steps", "lr", "batch_size", "grad_accum", "max_length", "warmup_steps",
              "weight_decay", "parts", "max_docs", "heldout_docs", "seed", "precision")


@dataclass
class RetrofitConfig:
    """Stage 1's budget. Mirrors ``conf/retrofit/*.yaml``: ``steps`` optimizer steps of
    ``batch_size`` x ``max_length`` background tokens, or with ``steps=0`` only the query
    statistics from ``calibration_batches`` batches (an empty memory trains nothing here)."""

    steps: int = 120
    lr: float = 1.0e-3
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    warmup_steps: int = 10
    weight_decay: float = 0.0
    parts: list[str] = field(default_factory=lambda: list(BACKGROUND_PARTS))
    max_docs: int | None = None
    heldout_docs: int = 200
    heldout_batches: int = 8  # batches the held-out background loss is measured on
    calibration_batches: int = 8
    seed: int = 0
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_length", "grad_accum", "heldout_batches",
                     "calibration_batches"):
            require_int(getattr(self, name), f"retrofit.{name}")
        for name in ("steps", "warmup_steps", "heldout_docs"):
            require_int(getattr(self, name), f"retrofit.{name}", minimum=0)
        if self.max_docs is not None:
            require_int(self.max_docs, "retrofit.max_docs")
        require_number(self.lr, "retrofit.lr")
        require_number(self.weight_decay, "retrofit.weight_decay", allow_zero=True)
        self.parts = check_parts(list(self.parts), "retrofit")
        self.precision = str(self.precision)

    @classmethod
    def from_config(cls, cfg: Any) -> RetrofitConfig:
        return from_node(cls, cfg, "retrofit")


class RetrofitModule(CausalLMModule):
    """Trains every memory parameter (keys, query, projections, values, gate) densely.

    On the shared Lightning basics (:mod:`smfexp.training.module`), not on the methods'
    base: stage 1 prepares the methods' inputs and does not depend on them."""

    method_name = "retrofit"

    def __init__(self, *args: Any, memory: MemoryConfig | dict, **kwargs: Any) -> None:
        self.memory_cfg = MemoryConfig.from_config(memory)
        super().__init__(*args, **kwargs)

    def prepare_model(self) -> None:
        if memory_config(self.model) is None:
            attach_memory(self.model, self.memory_cfg)
        set_sparse_values(self.model, False)
        freeze_backbone(self.model)

    def save_trained(self, directory: Path) -> Path:
        return save_memory(self.model, Path(directory))


@torch.inference_mode()
def mean_loss(model: torch.nn.Module, loader: DataLoader, max_batches: int | None = None,
              precision: str = "32-true") -> float:
    """Token-weighted mean causal-LM loss over (at most ``max_batches`` of) a loader."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with eval_mode(model):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            with autocast_for(precision, device):
                total += float(model(**batch).loss) * n
            tokens += n
    return total / max(tokens, 1)


@torch.inference_mode()
def calibrate_query_norms(model: torch.nn.Module, loader: DataLoader,
                          max_batches: int | None = None) -> int:
    """Set every BatchNorm query normaliser's statistics from the background text.

    The retrofit's training steps update them as they go; with ``retrofit.steps=0`` (an
    untrained memory, e.g. ``memory.value_init=zero``) this pass is the whole stage: without
    it the queries keep the direction every hidden state shares and most tokens read the same
    few slots. Returns the number of tokens the statistics were taken over.
    """
    memories = [m for m in memory_modules(model) if isinstance(m.query_norm, torch.nn.BatchNorm1d)]
    if not memories:
        return 0
    current: dict[str, torch.Tensor] = {}

    def hook(module: torch.nn.Module, args: tuple) -> None:
        module.calibrate_query_norm(args[0], current["mask"])

    for m in memories:
        m.start_calibration()
    handles = [m.register_forward_pre_hook(hook) for m in memories]
    device = next(model.parameters()).device
    run = forward_through_memories(model)
    tokens = 0
    try:
        with eval_mode(model):
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                mask = batch["attention_mask"].to(device)
                current["mask"] = mask
                run(batch["input_ids"].to(device), mask)
                tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return tokens


def retrofit_key(model: ModelSpec, memory: MemoryConfig, retro: RetrofitConfig) -> dict[str, Any]:
    """Everything that changes the retrofitted weights (not where outputs go, not progress)."""
    settings = dataclasses.asdict(retro)
    budget = {k: settings[k] for k in KEY_FIELDS}
    if retro.steps == 0:  # no training: the calibration pass is the whole stage
        budget["calibration_batches"] = retro.calibration_batches
    described = memory.to_dict()
    if described.get("value_init") == "normal":  # the default: keys of older caches stay valid
        del described["value_init"]
    spec = dataclasses.asdict(model)
    return {
        "model": {k: spec[k] for k in ("name", "source", "path", "revision", "tiny", "seed")},
        "memory": described,
        "retrofit": budget,
    }


def ensure_retrofit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec: ModelSpec,
    memory: MemoryConfig,
    retro: RetrofitConfig,
    data_dir: str | None = None,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Leave ``model`` with retrofitted memories; train them only if no cached copy exists.

    Returns the checkpoint directory and its report (held-out background loss before/after).
    The settings may be given as their typed configs or as config nodes.
    """
    spec = ModelSpec.from_config(spec)
    memory = MemoryConfig.from_config(memory)
    retro = RetrofitConfig.from_config(retro)
    memory.validate(model.config.num_hidden_layers)
    key = retrofit_key(spec, memory, retro)

    def load(directory: Path) -> dict[str, Any]:
        load_memory(model, directory)
        return json.loads((directory / REPORT).read_text(encoding="utf-8"))

    def build(directory: Path) -> None:
        _train_retrofit(model, tokenizer, memory, retro, key, directory, data_dir, progress)

    def undo() -> None:  # a half-loaded memory must not skew the base model's loss
        if memory_config(model) is not None:
            detach_memory(model)

    report, directory = load_or_build("retrofit", key, build, load,
                                      name=str(key["model"]["name"]), on_rebuild=undo)
    log.info("retrofit %s", directory)
    return directory, report


def _train_retrofit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    memory: MemoryConfig,
    retro: RetrofitConfig,
    key: dict[str, Any],
    directory: Path,
    data_dir: str | None,
    progress: bool,
) -> None:
    """Train (or calibrate) the memories of ``model`` and write them + the report into
    ``directory`` (the cache's temporary entry)."""
    t0 = time.perf_counter()
    L.seed_everything(retro.seed, workers=True)
    data = background_data(tokenizer, data_dir, batch_size=retro.batch_size,
                           max_length=retro.max_length, parts=retro.parts, seed=retro.seed,
                           heldout_docs=retro.heldout_docs, max_docs=retro.max_docs)
    heldout_batches = retro.heldout_batches
    precision = resolve_precision(retro.precision)
    empty = memory.value_init == "zero"
    # an empty memory that does not train adds exactly 0: the three held-out losses would all
    # be the base model's, measured at the cost of a minute of forward passes on a CPU
    measure = not (empty and retro.steps == 0)
    base_loss = (mean_loss(model, data.heldout_dataloader(), heldout_batches, precision)
                 if measure else None)
    if memory_config(model) is not None:
        detach_memory(model)
    module = RetrofitModule(
        model,
        tokenizer,
        memory=memory,
        lr=retro.lr,
        weight_decay=retro.weight_decay,
        warmup_steps=retro.warmup_steps,
        schedule="cosine",
    )
    # an empty memory adds exactly 0: the attached model *is* the base model
    attached_loss = base_loss if empty else mean_loss(model, data.heldout_dataloader(),
                                                      heldout_batches, precision)
    steps = 0
    if retro.steps > 0:
        trainer = L.Trainer(
            max_steps=retro.steps,
            accumulate_grad_batches=retro.grad_accum,
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
        log.info("retrofitting memories (%d steps); cached afterwards at %s", retro.steps,
                 directory)
        trainer.fit(module, train_dataloaders=data.train_dataloader())
        steps = trainer.global_step
        after_loss = mean_loss(model, data.heldout_dataloader(), heldout_batches, precision)
    else:  # no training: only the query normalisers' statistics, from background text
        tokens = calibrate_query_norms(model, data.train_dataloader(),
                                       retro.calibration_batches)
        log.info("memory query statistics calibrated on %d background tokens (retrofit.steps=0)",
                 tokens)
        after_loss = attached_loss if empty else mean_loss(
            model, data.heldout_dataloader(), heldout_batches, precision)
    if not measure:
        log.info("empty memory, no training: the model is the base model; held-out losses "
                 "not measured")
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
    if empty and steps == 0:  # every value row is still 0: store none of them
        save_memory(model, directory, rows=[torch.empty(0, dtype=torch.long)
                                            for _ in memory_modules(model)],
                    untouched_from="zero")
    else:
        module.save_trained(directory)
    atomic_write_json(directory / REPORT, report)
    if measure:
        log.info("retrofit done: held-out background loss base %.4f -> retrofitted %.4f "
                 "(%.0f s)", base_loss, after_loss, report["seconds"])
