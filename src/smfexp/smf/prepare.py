"""Everything ``method=smf`` needs before training: retrofitted memories + background stats.

Both are cached on disk (retrofit by model/memory/corpus/budget/seed, statistics by retrofit
checkpoint/corpus/batching), so every job of a sweep after the first starts in seconds.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smfexp.data.modules import BackgroundDataModule
from smfexp.memory import memory_modules
from smfexp.memory.attach import forward_through_memories
from smfexp.smf.background import (
    BackgroundStats,
    compute_background_stats,
    load_or_compute_background_stats,
)
from smfexp.smf.retrofit_cache import ensure_retrofit
from smfexp.utils.io import cache_root

log = logging.getLogger(__name__)


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

    def compute() -> BackgroundStats:
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
        loader = data.train_dataloader()
        unit = background_cfg.get("unit", "batch")
        n = background_cfg.get("n")
        log.info("computing background access statistics over %s %ss (once per retrofit; "
                 "cached)", n or "all", unit)
        return compute_background_stats(
            model,
            loader,
            memory_modules(model),
            progress=progress,
            max_batches=n if unit == "batch" else None,
            unit=unit,
            max_units=n,
            forward=forward_through_memories(model),
        )

    return load_or_compute_background_stats(cache_root() / "background", key, compute)


def prepare_smf(
    cfg: DictConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> dict[str, Any]:
    """Retrofit (or load) the memories into ``model``; return kwargs for the SMF module."""
    directory, report = ensure_retrofit(
        model, tokenizer, cfg.model, cfg.memory, cfg.retrofit, data_dir=cfg.paths.data_dir
    )
    # every SMF run gets the statistics: tfidf / kl select with them, and the selection
    # diagnostics (how much background text reads the updated rows) need them for any selector
    bg_cfg = OmegaConf.to_container(cfg.method.background, resolve=True)
    assert isinstance(bg_cfg, dict)
    background = background_statistics(model, tokenizer, directory.name, bg_cfg,
                                       cfg.paths.data_dir)
    return {
        "background": background,
        "base_checkpoint": str(directory),
        "retrofit_info": {"checkpoint": str(directory), "heldout_loss": report.get("heldout_loss")},
    }
