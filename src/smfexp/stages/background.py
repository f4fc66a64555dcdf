"""Background statistics of a retrofitted memory: how often background text reads each slot.

Computed once per (retrofit, corpus, granularity) by forward passes that stop after the last
memory layer, and cached; the numbers and their file format are ``smfexp.smf.background``'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smfexp.data.modules import BackgroundDataModule
from smfexp.memory.attach import forward_through_memories, memory_modules
from smfexp.smf.background import BackgroundStats, compute_background_stats
from smfexp.stages.cache import load_or_build

log = logging.getLogger(__name__)

FILE = "background.safetensors"


def background_statistics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    retrofit_id: str,
    background_cfg: dict[str, Any],
    data_dir: str | None,
    progress: bool = True,
) -> BackgroundStats:
    """df / reads / N of every memory slot over the background corpus (cached)."""
    key = {"retrofit": retrofit_id, **background_cfg}

    def build(directory: Path) -> None:
        data = BackgroundDataModule(
            tokenizer,
            data_dir=data_dir,
            batch_size=background_cfg["batch_size"],
            max_length=background_cfg["max_length"],
            parts=background_cfg.get("parts"),
            heldout_docs=0,
            shuffle_seed=background_cfg.get("seed", 0),
        )
        data.setup()
        unit = background_cfg.get("unit", "batch")
        n = background_cfg.get("n")
        log.info("computing background access statistics over %s %ss (once per retrofit; "
                 "cached)", n or "all", unit)
        stats = compute_background_stats(
            model,
            data.train_dataloader(),
            memory_modules(model),
            progress=progress,
            max_batches=n if unit == "batch" else None,
            unit=unit,
            max_units=n,
            forward=forward_through_memories(model),
        )
        stats.meta["key"] = key
        stats.save(directory / FILE)

    stats, directory = load_or_build("background", key, build,
                                     lambda d: BackgroundStats.load(d / FILE))
    log.info("background statistics %s", directory)
    return stats
