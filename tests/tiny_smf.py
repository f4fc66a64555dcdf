"""SMF on the tiny model over a 3-fact stream, as the SMF tests build it (one place)."""

from __future__ import annotations

from typing import Any

import torch

from smfexp.data.facts import FactsDataModule
from smfexp.data.modules import BackgroundDataModule
from smfexp.memory import attach_memory, memory_modules
from smfexp.memory.attach import forward_through_memories
from smfexp.methods.smf import SparseMemoryFinetune
from smfexp.smf.background import BackgroundStats, compute_background_stats

MEMORY = {"layers": [1, 2], "n_keys": 16, "knn": 4, "k_dim": 32, "heads": 2}


def tiny_smf(tokenizer: Any, data_dir: Any, data: dict[str, Any] | None = None,
             **smf: Any) -> tuple[SparseMemoryFinetune, FactsDataModule, BackgroundStats]:
    """The tiny model with a 2-layer memory, its background statistics (64 sequences of the
    wiki part), a 3-fact stream (``data``: FactsDataModule overrides) and SMF over it
    (``smf``: SparseMemoryFinetune overrides; tfidf, top_t 6, lr 5, constant lr)."""
    from smfexp.models.loading import ModelSpec, load_model

    model, _ = load_model(ModelSpec(name="tiny", source="tiny"))
    torch.manual_seed(0)
    attach_memory(model, MEMORY)
    bg = BackgroundDataModule(tokenizer, data_dir=str(data_dir), batch_size=4, max_length=32,
                              parts=["wiki"], heldout_docs=0)
    bg.setup()
    stats = compute_background_stats(model, bg.train_dataloader(), memory_modules(model),
                                     progress=False, unit="sequence", max_units=64,
                                     forward=forward_through_memories(model))
    facts = FactsDataModule(tokenizer, data_dir=str(data_dir),
                            **{"n_facts": 3, "phrasings_per_step": 4, **(data or {})})
    facts.setup()
    settings = {"selector": "tfidf", "top_t": 6, "lr": 5.0, "schedule": "constant", **smf}
    module = SparseMemoryFinetune(model, tokenizer, background_stats=stats, warmup_steps=0,
                                  **settings)
    return module, facts, stats
