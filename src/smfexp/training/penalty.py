"""A pull toward the base weights: L2-to-base and diagonal-Fisher EWC (Kirkpatrick et al. 2017).

    penalty = 1/2 * sum_i (l2 + ewc * F_i) * (w_i - w0_i)^2

``w0`` is a frozen copy of the trainable weights taken before training (4 bytes a parameter
in fp32: 0.54 GB for the 135M model), ``F`` the diagonal Fisher (:mod:`.fisher`), normalised
to mean 1 so that ``ewc`` is on ``l2``'s scale: an all-ones Fisher is L2. The two are folded
into one per-weight factor, a second copy only when EWC is on (L2 alone keeps a scalar).
Plain tensors, not module buffers: they stay out of checkpoints (a resumed run takes its copy
from the base model again, before the checkpoint's weights are loaded) and out of DDP's
buffer broadcast.

The value and its gradient ``(l2 + ewc * F) * (w - w0)`` come from one autograd function that
saves nothing but references, so adding the penalty to the loss costs a few elementwise passes
over the weights and no activation memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


class _QuadraticPull(torch.autograd.Function):
    """1/2 sum_i c_i (w_i - w0_i)^2 over tensors, with its gradient c_i (w_i - w0_i)."""

    @staticmethod
    def forward(ctx: Any, pull: BasePull, *weights: Tensor) -> Tensor:
        ctx.pull = pull
        ctx.save_for_backward(*weights)
        total = torch.zeros((), dtype=torch.float32, device=weights[0].device)
        for w, anchor, factor in zip(weights, pull.anchors, pull.factors(), strict=True):
            diff = w.detach() - anchor
            total += (factor * diff * diff).sum(dtype=torch.float32)
        return total / 2

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        pull: BasePull = ctx.pull
        weights = ctx.saved_tensors
        grads = [(w.detach() - anchor).mul_(factor).mul_(grad.to(w.dtype))
                 for w, anchor, factor in zip(weights, pull.anchors, pull.factors(),
                                              strict=True)]
        return None, *grads


class BasePull:
    """The penalty toward the weights ``params`` hold now (build it before training)."""

    def __init__(self, params: Mapping[str, nn.Parameter], l2: float = 0.0, ewc: float = 0.0,
                 fisher: Mapping[str, Tensor] | None = None,
                 device: torch.device | str | None = None) -> None:
        """``device``: where the copies live (the training device; default: the weights')."""
        if ewc and fisher is None:
            raise ValueError("method.ewc > 0 needs the Fisher of the base model")
        self.names = list(params)
        self.l2 = float(l2)
        self.ewc = float(ewc)
        self.anchors = [p.detach().to(device or p.device, copy=True) for p in params.values()]
        self._factors: list[Tensor] = []
        if self.ewc:
            assert fisher is not None
            self._factors = [fisher[name].to(a.device, a.dtype) * self.ewc + self.l2
                             for name, a in zip(self.names, self.anchors, strict=True)]

    def factors(self) -> list[Tensor] | list[float]:
        """Per weight ``l2 + ewc * F`` (EWC on), else the scalar ``l2``."""
        return self._factors if self.ewc else [self.l2] * len(self.names)

    def __call__(self, params: Mapping[str, nn.Parameter]) -> Tensor:
        """The penalty at ``params`` (the same names as at construction), differentiable."""
        return _QuadraticPull.apply(self, *(params[n] for n in self.names))

    @torch.no_grad()
    def distance(self, params: Mapping[str, nn.Parameter]) -> float:
        """||w - w0||_2 over the pulled weights: how far training moved them."""
        total = sum(float((params[n].detach() - a).double().pow(2).sum())
                    for n, a in zip(self.names, self.anchors, strict=True))
        return total ** 0.5
