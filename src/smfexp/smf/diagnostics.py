"""How specific are the rows SMF updates? Three numbers per memory layer, on plain tensors.

- ``overlap``: mean Jaccard overlap between the rows selected for consecutive facts (for
  batches that mix facts: consecutive optimizer steps). Near 0: every fact writes its own
  rows; near 1: every fact writes the same rows (the template, the answer format).
- ``background_share``: the share of all background reads that land on the rows one fact
  updated (``per_fact``), and on every row updated so far (``touched``): how much general
  text will see the change. 512 random rows of a 16K-slot table: ~3%.
- ``answer_weight``: the share of the read weight at the loss-bearing (answer-predicting)
  positions that falls on the selected rows: how much the update can change the answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


def jaccard(a: Tensor, b: Tensor) -> float:
    """|a & b| / |a | b| of two sets of unique row ids (1.0 for two empty sets)."""
    if a.numel() == 0 and b.numel() == 0:
        return 1.0
    inter = int(torch.isin(a, b.to(a.device)).sum())
    return inter / (a.numel() + b.numel() - inter)


def read_share(reads: Tensor, rows: Tensor) -> float:
    """Share of ``reads`` (per-slot background read counts) that falls on ``rows``."""
    total = float(reads.sum())
    return float(reads.index_select(0, rows.to(reads.device)).sum()) / total if total else 0.0


def read_weighted_norm(reads: Tensor, values: Tensor) -> float:
    """Sum over slots of (share of ``reads`` on the slot) x (L2 norm of its value row): the
    size of the value a background read lands on, on average. For a memory that started
    empty this is how much general text's reads see changed, whatever the number of rows."""
    total = float(reads.sum())
    if not total:
        return 0.0
    norms = values.detach().float().norm(dim=1)
    return float((reads.to(norms.device, torch.float64) * norms.double()).sum()) / total


def weight_on_rows(indices: Tensor, weights: Tensor, positions: Tensor, rows: Tensor) -> float:
    """Share of the read weight at ``positions`` ([B, T] bool) that falls on ``rows``."""
    idx = indices[positions]
    w = weights[positions].float()
    total = float(w.sum())
    if total == 0:
        return math.nan
    return float((w * torch.isin(idx, rows.to(idx.device))).sum()) / total


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


@dataclass
class LayerDiagnostics:
    """Running record of one layer: per-unit (fact or step) values and the current unit."""

    overlaps: list[float] = field(default_factory=list)
    fact_background: list[float] = field(default_factory=list)
    answer_weight: list[float] = field(default_factory=list)
    previous: Tensor | None = None
    current: Tensor | None = None


class SelectionDiagnostics:
    """Feed every step's selection; call :meth:`summary` at the end (results.json)."""

    def __init__(self, n_layers: int, background_reads: list[Tensor] | None) -> None:
        self.layers = [LayerDiagnostics() for _ in range(n_layers)]
        self.reads = background_reads
        self.unit: int | None = None  # the fact (or step) being trained

    def step(self, unit: int) -> dict[str, float]:
        """Start ``unit``'s rows (a new fact closes the previous one); returns closed values."""
        if unit == self.unit:
            return {}
        logged: dict[str, float] = {}
        for i, layer in enumerate(self.layers):
            if layer.current is None:
                continue
            if layer.previous is not None:
                layer.overlaps.append(jaccard(layer.current, layer.previous))
                logged[f"smf/L{i}/fact_overlap"] = layer.overlaps[-1]
            if self.reads is not None:
                layer.fact_background.append(read_share(self.reads[i], layer.current))
                logged[f"smf/L{i}/fact_background_share"] = layer.fact_background[-1]
            layer.previous, layer.current = layer.current, None
        self.unit = unit
        return logged

    def add(self, layer: int, rows: Tensor, answer_weight: float) -> None:
        """The rows selected for ``layer`` in this step of the current unit."""
        record = self.layers[layer]
        rows = rows.detach()
        record.current = rows if record.current is None else torch.unique(
            torch.cat([record.current, rows]))
        record.answer_weight.append(answer_weight)

    def summary(self, touched: list[Tensor]) -> list[dict[str, float | None]]:
        self.step(-1)  # close the last unit
        out = []
        for i, layer in enumerate(self.layers):
            out.append({
                "overlap": _mean(layer.overlaps),
                "fact_background_share": _mean(layer.fact_background),
                "touched_background_share": (read_share(self.reads[i], touched[i].nonzero()
                                                        .squeeze(1))
                                             if self.reads is not None else None),
                "answer_weight_on_selected": _mean(layer.answer_weight),
            })
        return out

    def state_dict(self) -> dict:
        return {"unit": self.unit, "layers": [
            {"overlaps": list(r.overlaps), "fact_background": list(r.fact_background),
             "answer_weight": list(r.answer_weight), "previous": r.previous,
             "current": r.current} for r in self.layers]}

    def load_state_dict(self, state: dict) -> None:
        self.unit = state["unit"]
        for record, saved in zip(self.layers, state["layers"], strict=True):
            record.overlaps = list(saved["overlaps"])
            record.fact_background = list(saved["fact_background"])
            record.answer_weight = list(saved["answer_weight"])
            record.previous, record.current = saved["previous"], saved["current"]
