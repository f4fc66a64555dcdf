"""Per-optimizer-step slot access counts for the memory layers.

Selection must see every real token of an optimizer step (all gradient-accumulation
micro-batches, all data-parallel ranks) and no padding; counting is done on device with
weighted ``index_add_`` so a forward never forces a host sync.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _flat_weights(indices: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Flatten ``indices`` [B, T, ...] and broadcast the token mask [B, T] over the reads."""
    if indices.dim() < 2:
        raise ValueError(f"indices must be [B, T, ...], got shape {tuple(indices.shape)}")
    idx = indices.reshape(indices.shape[0], indices.shape[1], -1).long()
    if mask is None:
        weights = torch.ones(idx.numel(), dtype=torch.int64, device=idx.device)
    else:
        if tuple(mask.shape) != tuple(idx.shape[:2]):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match indices [B, T] = "
                f"{tuple(idx.shape[:2])}"
            )
        # Weights instead of boolean indexing: padding reads add 0, no nonzero()/sync.
        weights = mask.to(device=idx.device, dtype=torch.int64).unsqueeze(-1).expand_as(idx)
        weights = weights.reshape(-1)
    return idx.reshape(-1), weights


class AccessCounter:
    """Integer read counts per memory layer, accumulated until :meth:`reset`.

    Call :meth:`add` after every micro-batch forward, :meth:`all_reduce` before selecting
    (so all ranks select the same rows), and :meth:`reset` after each optimizer step.
    """

    def __init__(self, n_slots: list[int], device: torch.device | str | None = None) -> None:
        self._counts = [torch.zeros(int(n), dtype=torch.int64, device=device) for n in n_slots]

    @property
    def n_layers(self) -> int:
        return len(self._counts)

    def add(self, layer: int, indices: Tensor, mask: Tensor | None = None) -> None:
        """Count the slots read at every real token.

        ``indices``: LongTensor [B, T, K] (or [B, T, heads, knn]); ``mask``: [B, T] bool/int,
        1 = real token, 0 = padding (its reads are ignored). ``None`` counts every token.
        """
        counts = self._counts[layer]
        idx, weights = _flat_weights(indices.to(counts.device), mask)
        counts.index_add_(0, idx, weights)

    def counts(self, layer: int) -> Tensor:
        """Current counts of ``layer`` (a live view: clone it if you keep it past reset)."""
        return self._counts[layer]

    def reset(self) -> None:
        """Start counting a new optimizer step."""
        for c in self._counts:
            c.zero_()

    def all_reduce(self) -> None:
        """Sum counts over data-parallel ranks (no-op without an initialised process group).

        One collective for all layers: the counts are concatenated, reduced and split back.
        """
        if not (dist.is_available() and dist.is_initialized()) or not self._counts:
            return
        flat = torch.cat(self._counts)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for c in self._counts:
            c.copy_(flat[offset : offset + c.numel()])
            offset += c.numel()

    def to(self, device: torch.device | str) -> AccessCounter:
        """Move the counters (e.g. once the model is on its accelerator)."""
        self._counts = [c.to(device) for c in self._counts]
        return self
