"""An order (shuffled, or the stream's own) that a resumed run can re-enter mid-epoch.

``DataLoader(shuffle=True)`` draws each epoch's permutation from one running generator, so a
run restarted from a checkpoint cannot reproduce the order it was in. Here the order of epoch
``e`` depends on ``(seed, e)`` alone, and ``start_at`` skips the batches already trained on.
A fact stream is not shuffled at all (``shuffle=False``): its order is the experiment.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
from torch.utils.data import Sampler

T = TypeVar("T")


def evenly_spaced(rows: Sequence[T], n: int | None) -> list[T]:
    """``n`` rows evenly spaced over ``rows`` (all of them when ``n`` is None or not smaller):
    a subset of a stream's facts that covers its beginning, middle and end alike."""
    if n is None or len(rows) <= n:
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


class ResumableRandomSampler(Sampler[int]):
    """Permutation of ``range(n)`` per epoch (or ``range(n)`` itself with ``shuffle=False``);
    ``__len__`` stays ``n`` so schedules agree."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._skip = 0  # samples to skip in the next epoch started (set by a resume)

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at each epoch start
        self.epoch = epoch

    def start_at(self, epoch: int, samples_done: int) -> None:
        """Continue epoch ``epoch`` after its first ``samples_done`` samples."""
        self.epoch = epoch
        self._skip = samples_done

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        skip, self._skip = self._skip, 0
        return iter(order[skip:])

    def __len__(self) -> int:
        return self.n
