"""Deferred value gradients: keep what is needed to build any row's gradient, build only the
rows an optimizer step will change.

Why: SMF updates a few hundred rows per layer per step, but autograd's value gradient has one
[D] row per read (tokens x heads x knn, e.g. 2048 x 64 x 576 floats = 300 MB per layer even
when sparse), and clipping or selecting from it means coalescing it. The gradient of row r is
``sum over reads (t, j) of slot r: w[t, j] * dL/dbag[t]``, so the backward pass only has to
keep ``dL/dbag`` ([tokens, D]: 4.7 MB for 2048 tokens) next to the read indices and weights
the forward pass already has. :meth:`ValueGradSink.rows_grad` then builds the gradient of
the selected rows in O(reads + hits x D): nothing in the step grows with the table size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def match_rows(rows: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Which entries of ``idx`` are in ``rows`` (sorted, unique, non-empty), and where.

    Returns (positions in ``idx`` that hit, their positions in ``rows``); ~ len(idx) log S.
    """
    pos = torch.searchsorted(rows, idx).clamp_(max=rows.numel() - 1)
    hit = (rows.index_select(0, pos) == idx).nonzero().squeeze(1)
    return hit, pos.index_select(0, hit)


class ValueGradSink:
    """Collects (read indices, read weights, dL/dbag) of every backward pass until cleared.

    One sink per memory layer; micro-batches of one optimizer step accumulate (their
    gradients add up, as autograd's would).
    """

    def __init__(self) -> None:
        self._parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, indices: Tensor, weights: Tensor, grad_bag: Tensor) -> None:
        self._parts.append((indices.detach(), weights.detach(), grad_bag.detach()))

    def __len__(self) -> int:
        return len(self._parts)

    def clear(self) -> None:
        self._parts.clear()

    @torch.no_grad()
    def rows_grad(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Gradient of ``rows`` (sorted, unique) as ([S'], [S', D]): rows nobody read dropped."""
        n_sel = rows.numel()
        if not self._parts or n_sel == 0:
            dim = self._parts[0][2].shape[1] if self._parts else 0
            empty = torch.empty(0, dtype=torch.int64, device=rows.device)
            return empty, torch.zeros((0, dim), device=rows.device)
        grad_dtype = self._parts[0][2].dtype
        buf = torch.zeros((n_sel, self._parts[0][2].shape[1]), dtype=grad_dtype,
                          device=rows.device)
        present = torch.zeros(n_sel, dtype=torch.bool, device=rows.device)
        for indices, weights, grad_bag in self._parts:
            hit, pos_hit = match_rows(rows, indices.reshape(-1))
            if hit.numel() == 0:
                continue
            token = torch.div(hit, indices.shape[1], rounding_mode="floor")
            # [selected rows, tokens] read weights @ dL/dbag: no [hits, D] intermediate
            # (hits are most reads, since the selected rows are the most-read ones).
            reads = torch.sparse_coo_tensor(
                torch.stack([pos_hit, token]),
                weights.reshape(-1).index_select(0, hit).to(grad_dtype),
                size=(n_sel, grad_bag.shape[0]),
                check_invariants=False,  # indices in range by construction
            )
            buf.add_(torch.sparse.mm(reads, grad_bag))
            present[pos_hit] = True
        keep = present.nonzero().squeeze(1)
        if keep.numel() == n_sel:
            return rows, buf
        return rows.index_select(0, keep), buf.index_select(0, keep)


class _DeferredBag(torch.autograd.Function):
    """``embedding_bag(sum)`` whose value gradient goes to a sink instead of ``values.grad``."""

    @staticmethod
    def forward(ctx: Any, indices: Tensor, weights: Tensor, values: Tensor,
                sink: ValueGradSink) -> Tensor:
        ctx.save_for_backward(indices, weights, values)
        ctx.sink = sink
        return F.embedding_bag(indices, values, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_bag: Tensor) -> tuple[Tensor | None, ...]:
        indices, weights, values = ctx.saved_tensors
        grad_bag = grad_bag.contiguous()
        if ctx.needs_input_grad[2]:
            ctx.sink.add(indices, weights, grad_bag)
        grad_weights = None
        if ctx.needs_input_grad[1]:  # d bag[t] / d w[t, j] = values[idx[t, j]]: recompute the
            with torch.enable_grad():  # bag without a value grad (no [reads, D] tensor)
                w = weights.detach().requires_grad_()
                out = F.embedding_bag(indices, values.detach(), per_sample_weights=w, mode="sum")
                (grad_weights,) = torch.autograd.grad(out, w, grad_bag)
        return None, grad_weights, None, None


def deferred_embedding_bag(indices: Tensor, values: Tensor, weights: Tensor,
                           sink: ValueGradSink) -> Tensor:
    """[N, K] indices/weights -> [N, D] weighted sums; the value gradient lands in ``sink``."""
    return _DeferredBag.apply(indices, weights, values, sink)
