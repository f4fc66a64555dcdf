"""Replay: ``k`` background sequences beside every training batch (REMIX, arXiv 2411.07175;
Abbes et al. 2025, arXiv 2508.01908), in the same optimizer step as that batch.

Batch ``b`` of a run (counted over epochs) replays the blocks at positions ``b*k .. b*k+k-1``
of the replay order: the corpus's blocks in a permutation drawn from (seed, pass over the
corpus) alone, pass after pass. Any batch's replay is so computable without the batches before
it: a resumed run that re-enters the data at batch ``b`` (``ResumableRandomSampler.start_at``)
gets the very blocks the uninterrupted run got, and one ``CombinedLoader`` over the training
loader and the replay loader keeps the two aligned batch for batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from smfexp.data.collate import PadCollator, TokenizedExample
from smfexp.data.sampling import ResumableRandomSampler
from smfexp.data.sources import BACKGROUND_PARTS
from smfexp.utils.configs import require_int

TRAIN = "train"    # the combined batch's keys: the run's own batch ...
REPLAY = "replay"  # ... and the background sequences replayed beside it


@dataclass(frozen=True)
class ReplaySpec:
    """What a method replays: ``k`` sequences of ``length`` tokens per batch, from the
    background corpus ``parts``, in an order drawn from ``seed``."""

    k: int
    length: int = 128
    parts: tuple[str, ...] = field(default_factory=lambda: tuple(BACKGROUND_PARTS))
    seed: int = 0

    def __post_init__(self) -> None:
        check_replay_arguments({"replay_k": self.k, "replay_length": self.length,
                                "replay_source": list(self.parts), "replay_seed": self.seed})


def check_replay_arguments(args: Mapping[str, Any]) -> None:
    """One-line errors for impossible replay settings (the ``method.replay_*`` keys present)."""
    if "replay_k" in args:
        require_int(args["replay_k"], "method.replay_k", minimum=0)
    if "replay_length" in args:  # a loss needs a token to predict from and one to predict
        require_int(args["replay_length"], "method.replay_length", minimum=2)
    if "replay_seed" in args:
        require_int(args["replay_seed"], "method.replay_seed", minimum=0)
    if "replay_source" in args:
        parts = args["replay_source"]
        parts = [parts] if isinstance(parts, str) else list(parts or [])
        unknown = sorted(set(parts) - set(BACKGROUND_PARTS))
        if unknown or not parts:
            raise ValueError(f"method.replay_source has unknown or no parts {unknown}; valid: "
                             f"{list(BACKGROUND_PARTS)}")


class ReplayStream(Dataset):
    """Batch number ``b`` -> the collated ``k`` blocks replayed beside batch ``b``."""

    def __init__(self, blocks: Sequence[TokenizedExample], k: int, seed: int,
                 collator: PadCollator) -> None:
        if not blocks:
            raise ValueError("replay: the corpus produced no full block; lower "
                             "method.replay_length or add method.replay_source parts")
        self.blocks = blocks
        self.k = k
        self.seed = seed
        self.collator = collator
        self._order: tuple[int, list[int]] | None = None  # (pass, its permutation): reused

    def order(self, corpus_pass: int) -> list[int]:
        """The blocks' order in pass ``corpus_pass`` over the corpus: (seed, pass) alone."""
        if self._order is None or self._order[0] != corpus_pass:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + corpus_pass)
            self._order = (corpus_pass, torch.randperm(len(self.blocks),
                                                       generator=generator).tolist())
        return self._order[1]

    def positions(self, batch: int) -> list[int]:
        """The blocks replayed beside batch ``batch``."""
        n = len(self.blocks)
        out = []
        for p in range(batch * self.k, (batch + 1) * self.k):
            out.append(self.order(p // n)[p % n])
        return out

    def __getitem__(self, batch: int) -> dict[str, Any]:
        return self.collator([self.blocks[i] for i in self.positions(batch)])


class ReplaySampler(ResumableRandomSampler):
    """Batch numbers over the whole run: epoch ``e`` yields ``e*n .. e*n+n-1`` (from the
    batch a resume re-enters at), so a later epoch replays new blocks, not the first's."""

    def __init__(self, n: int) -> None:
        super().__init__(n, shuffle=False)

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.n
        return (start + i for i in super().__iter__())


def with_replay(loader: DataLoader, stream: ReplayStream,
                position: tuple[int, int] | None = None,
                num_workers: int = 0) -> CombinedLoader:
    """``loader``'s batches, each with its replay: ``{TRAIN: batch, REPLAY: sequences}``.

    ``position``: (epoch, batches done) a resumed run re-enters at; the training loader's own
    sampler re-enters there too (the data module's ``state_dict``).
    """
    sampler = ReplaySampler(len(loader))
    if position is not None:
        sampler.start_at(*position)
    replay = DataLoader(stream, batch_size=None, sampler=sampler, num_workers=num_workers)
    return CombinedLoader({TRAIN: loader, REPLAY: replay}, mode="min_size")
