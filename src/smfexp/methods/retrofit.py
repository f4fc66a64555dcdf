"""Stage 1 of SMF: heal freshly attached memories on general text, backbone frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from smfexp.memory import MemoryConfig, attach_memory, freeze_backbone, save_memory
from smfexp.memory.attach import (
    forward_through_memories,
    memory_config,
    memory_modules,
    set_sparse_values,
)
from smfexp.methods.base import FinetuneModule
from smfexp.utils.precision import autocast_for


class RetrofitModule(FinetuneModule):
    """Trains every memory parameter (keys, query, projections, values, gate) densely."""

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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["labels"][:, 1:] != -100).sum())
        with autocast_for(precision, device):
            total += float(model(**batch).loss) * n
        tokens += n
    model.train(was_training)
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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    run = forward_through_memories(model)
    tokens = 0
    try:
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
        model.train(was_training)
    return tokens
