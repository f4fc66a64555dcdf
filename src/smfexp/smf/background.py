"""Background-corpus slot statistics for the tfidf and kl selectors.

Computed once per (model, memory, background corpus, granularity) and cached: ``df`` (number
of background units - sequences, or batches - reading a slot at least once), ``reads`` (total
reads) and ``n_batches`` (N, the number of units). The unit decides whether idf can tell
slots apart: a 2048-token batch reads most of a 16K-slot table (idf ~ 0 nearly everywhere),
one 128-token sequence reads a few percent of it. It belongs in the cache key.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from smfexp.utils.io import atomic_file, atomic_write_json
from smfexp.utils.modes import eval_mode

log = logging.getLogger(__name__)

FORMAT = "smfexp.background/v1"


@dataclass(frozen=True)
class LayerBackground:
    """One memory layer's background statistics, as the selectors consume them."""

    df: Tensor  # [n_slots] int64
    reads: Tensor  # [n_slots] int64
    n_batches: int

    def to(self, device: torch.device | str) -> LayerBackground:
        return LayerBackground(self.df.to(device), self.reads.to(device), self.n_batches)


@dataclass
class BackgroundStats:
    """Statistics for all memory layers (index = position in the model's memory-layer list)."""

    df: list[Tensor]
    reads: list[Tensor]
    n_batches: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.df) != len(self.reads):
            raise ValueError("df and reads must have one tensor per layer")
        for i, (d, r) in enumerate(zip(self.df, self.reads, strict=True)):
            if d.shape != r.shape or d.dim() != 1:
                raise ValueError(f"layer {i}: df {tuple(d.shape)} / reads {tuple(r.shape)}")

    @property
    def n_layers(self) -> int:
        return len(self.df)

    def layer(self, i: int) -> LayerBackground:
        return LayerBackground(self.df[i], self.reads[i], self.n_batches)

    def to(self, device: torch.device | str) -> BackgroundStats:
        return BackgroundStats(
            [d.to(device) for d in self.df],
            [r.to(device) for r in self.reads],
            self.n_batches,
            dict(self.meta),
        )

    def summary(self) -> dict[str, Any]:
        """Key usage per layer: ``coverage`` = share of slots ever read, ``top1pct_read_share``
        = share of all reads that go to the most-read 1% of slots (~0.01 when reads are even;
        near 1 when the memory has collapsed onto a few slots and every update touches the
        slots everything reads); whether idf discriminates: the share of slots every unit
        read (``df_eq_n``) and with idf < 0.1 (``idf_below_0.1``)."""
        n = self.n_batches
        return {
            "n_batches": n,
            "unit": self.meta.get("unit", "batch"),
            "layers": [
                {
                    "n_slots": int(d.numel()),
                    "total_reads": int(r.sum()),
                    "coverage": float((d > 0).double().mean()) if d.numel() else 0.0,
                    "top1pct_read_share": top_read_share(r, 0.01),
                    "df_eq_n": float((d == n).double().mean()) if d.numel() else 0.0,
                    "idf_below_0.1": float(
                        (torch.log((n + 1) / (d.double() + 1)) < 0.1).double().mean()
                    ) if d.numel() else 0.0,
                }
                for d, r in zip(self.df, self.reads, strict=True)
            ],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file atomically; ``meta`` (e.g. the cache key) goes in its header.

        A ``<name>.json`` summary is written beside it for people browsing the cache; the
        loader only reads the safetensors file.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for i, (d, r) in enumerate(zip(self.df, self.reads, strict=True)):
            tensors[f"layer{i}.df"] = d.detach().to("cpu", torch.int64).contiguous()
            tensors[f"layer{i}.reads"] = r.detach().to("cpu", torch.int64).contiguous()
        metadata = {
            "format": FORMAT,
            "n_layers": str(self.n_layers),
            "n_batches": str(self.n_batches),
            "meta": json.dumps(self.meta, sort_keys=True, default=str),
        }
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        atomic_write_json(path.with_suffix(".json"), {"meta": self.meta, **self.summary()})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> BackgroundStats:
        """Read and validate a file written by :meth:`save`; raises ``ValueError`` if invalid."""
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            md = fh.metadata() or {}
            if md.get("format") != FORMAT:
                raise ValueError(f"{path}: not a {FORMAT} file (format={md.get('format')!r})")
            n_layers, n_batches = int(md["n_layers"]), int(md["n_batches"])
            meta = json.loads(md.get("meta", "{}"))
            df = [fh.get_tensor(f"layer{i}.df") for i in range(n_layers)]
            reads = [fh.get_tensor(f"layer{i}.reads") for i in range(n_layers)]
        if n_batches < 0:
            raise ValueError(f"{path}: negative n_batches")
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: meta is not a mapping")
        for i, (d, r) in enumerate(zip(df, reads, strict=True)):
            if d.dtype != torch.int64 or r.dtype != torch.int64 or d.shape != r.shape:
                raise ValueError(f"{path}: layer {i} has malformed tensors")
            if d.numel() and (int(d.min()) < 0 or int(d.max()) > n_batches or int(r.min()) < 0):
                raise ValueError(f"{path}: layer {i} has counts out of range")
        return cls(df, reads, n_batches, meta).to(device)


def top_read_share(reads: Tensor, fraction: float = 0.01) -> float:
    """Share of all reads that go to the most-read ``fraction`` of slots."""
    total = float(reads.sum())
    if total == 0:
        return 0.0
    k = max(1, int(reads.numel() * fraction))
    return float(reads.double().topk(k).values.sum()) / total


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _progress(it: Iterable, enabled: bool, total: int | None) -> Iterable:
    return tqdm(it, desc="background stats", total=total, disable=not enabled, leave=False)


UNITS = ("sequence", "batch")


def count_units(indices: Tensor, mask: Tensor, n_slots: int, unit: str) -> tuple[Tensor, Tensor]:
    """(reads, df increment) of one forward batch: reads per slot over its real tokens, and
    how many background units (each sequence, or the batch as one) read each slot."""
    idx = indices.reshape(indices.shape[0], indices.shape[1], -1).long()
    weights = mask.to(idx.device, torch.int64).unsqueeze(-1).expand_as(idx)
    reads = torch.zeros(n_slots, dtype=torch.int64, device=idx.device)
    reads.index_add_(0, idx.reshape(-1), weights.reshape(-1))
    if unit == "batch":
        return reads, (reads > 0).long()
    real = weights.reshape(-1) > 0
    seq = torch.arange(idx.shape[0], device=idx.device).view(-1, 1, 1).expand_as(idx)
    keys = torch.unique((seq.reshape(-1) * n_slots + idx.reshape(-1))[real])
    df = torch.zeros(n_slots, dtype=torch.int64, device=idx.device)
    df.index_add_(0, keys % n_slots, torch.ones_like(keys))
    return reads, df


def compute_background_stats(
    model: torch.nn.Module,
    dataloader: Iterable[Mapping[str, Tensor]],
    memory_layers: list,
    progress: bool = True,
    max_batches: int | None = None,
    unit: str = "batch",
    max_units: int | None = None,
    forward: Callable[[Tensor, Tensor], Any] | None = None,
) -> BackgroundStats:
    """Run the model over background batches and count which slots each unit reads.

    ``unit="batch"``: df_i = number of batches that read slot i (N = batches). ``"sequence"``:
    every sequence of a batch is its own unit (N = sequences; a forward pass still carries a
    whole batch), the granularity of a one-fact training step. ``max_units`` caps N.
    Each memory layer must expose ``values`` ([n_slots, v_dim]) and, after a forward,
    ``last_indices`` ([B, T, K]). Only tokens with ``attention_mask`` = 1 are counted.
    ``forward(input_ids, attention_mask)`` replaces ``model(...)`` (e.g. one that stops after
    the last memory layer). The model is put in eval mode and its training flag restored.
    """
    if unit not in UNITS:
        raise ValueError(f"background unit={unit!r}; valid: {', '.join(UNITS)}")
    device = _model_device(model)
    n_slots = [int(layer.values.shape[0]) for layer in memory_layers]
    count_device = memory_layers[0].values.device if memory_layers else device
    df = [torch.zeros(n, dtype=torch.int64, device=count_device) for n in n_slots]
    reads = [torch.zeros(n, dtype=torch.int64, device=count_device) for n in n_slots]
    n_units = 0
    try:
        total: int | None = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    per_batch = getattr(dataloader, "batch_size", None)
    if unit == "sequence" and max_units and total is not None and per_batch:
        total = min(total, -(-max_units // per_batch))  # the batches N sequences take
    run = forward or (lambda ids, mask: model(input_ids=ids, attention_mask=mask))

    with eval_mode(model), torch.inference_mode():
        for n_batch, batch in enumerate(_progress(dataloader, progress, total)):
            if max_batches is not None and n_batch >= max_batches:
                break
            if max_units is not None and n_units >= max_units:
                break
            input_ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else mask.to(device)
            if unit == "sequence" and max_units is not None:
                keep = min(input_ids.shape[0], max_units - n_units)
                input_ids, mask = input_ids[:keep], mask[:keep]
            run(input_ids, mask)
            for li, layer in enumerate(memory_layers):
                if layer.last_indices is None:
                    raise RuntimeError(f"memory layer {li} did not record last_indices")
                r, d = count_units(layer.last_indices.to(count_device),
                                   mask.to(count_device), n_slots[li], unit)
                reads[li] += r
                df[li] += d
            n_units += input_ids.shape[0] if unit == "sequence" else 1
    return BackgroundStats(df, reads, n_units, {"unit": unit})
