"""Background statistics of a retrofitted memory: how often background text reads each slot.

Computed once per (retrofit, corpus, granularity) by forward passes that stop after the last
memory layer, and cached; the numbers and their file format are ``smfexp.smf.background``'s.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from smfexp.data.modules import BackgroundDataModule
from smfexp.data.sources import BACKGROUND_PARTS
from smfexp.memory.attach import forward_through_memories, memory_modules
from smfexp.smf.background import UNITS, BackgroundStats, compute_background_stats
from smfexp.utils.cache import load_or_build
from smfexp.utils.configs import from_node, require_int

log = logging.getLogger(__name__)

FILE = "background.safetensors"


def check_parts(parts: list[str], group: str) -> list[str]:
    unknown = sorted(set(parts) - set(BACKGROUND_PARTS))
    if unknown or not parts:
        raise ValueError(f"{group}.parts has unknown or no parts {unknown}; valid: "
                         f"{list(BACKGROUND_PARTS)}")
    return list(parts)


@dataclass
class BackgroundConfig:
    """How the background statistics are taken. Mirrors ``conf/background/default.yaml``:
    ``n`` background units (a sequence, or a batch of ``batch_size`` sequences) of
    ``max_length`` tokens from the corpus ``parts``."""

    unit: str = "sequence"
    n: int = 256
    max_length: int = 128
    batch_size: int = 16
    parts: list[str] = field(default_factory=lambda: list(BACKGROUND_PARTS))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"background.unit={self.unit!r} is not valid; choose one of "
                             f"{list(UNITS)}")
        for name in ("n", "max_length", "batch_size"):
            require_int(getattr(self, name), f"background.{name}")
        self.parts = check_parts(list(self.parts), "background")

    @classmethod
    def from_config(cls, cfg: Any) -> BackgroundConfig:
        return from_node(cls, cfg, "background")


def background_data(tokenizer: PreTrainedTokenizerBase, data_dir: str | None, *,
                    batch_size: int, max_length: int, parts: list[str], seed: int,
                    heldout_docs: int = 0, max_docs: int | None = None) -> BackgroundDataModule:
    """The background corpus in blocks, set up (stage 1 and the statistics read the same)."""
    data = BackgroundDataModule(tokenizer, data_dir=data_dir, batch_size=batch_size,
                                max_length=max_length, parts=parts, max_docs=max_docs,
                                heldout_docs=heldout_docs, shuffle_seed=seed)
    data.setup()
    return data


def background_statistics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    retrofit_id: str,
    cfg: BackgroundConfig,
    data_dir: str | None,
    progress: bool = True,
) -> BackgroundStats:
    """df / reads / N of every memory slot over the background corpus (cached)."""
    cfg = BackgroundConfig.from_config(cfg)
    key = {"retrofit": retrofit_id, **dataclasses.asdict(cfg)}

    def build(directory: Path) -> None:
        data = background_data(tokenizer, data_dir, batch_size=cfg.batch_size,
                               max_length=cfg.max_length, parts=cfg.parts, seed=cfg.seed)
        unit, n = cfg.unit, cfg.n
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
