"""The dense masked AdamW of reference SMF implementations: the baseline the row-sparse
optimizers are measured against (``bench_sparse_update.py``, ``suite.py``). Never train with it.

It densifies the gradient, zeroes the unselected rows and runs AdamW over the whole table, so
rows selected on earlier steps keep moving (their moments are non-zero; weight decay touches
every row), and every step costs O(table) in time plus dense [n_rows, D] moments in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class DenseMaskedAdamW(torch.optim.AdamW):
    """Masked dense AdamW (the flawed reference update; see the module docstring)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False
        )
        self._selected: dict[Tensor, Tensor] = {}

    def set_selected_rows(self, param: Tensor, rows: Tensor) -> None:
        self._selected[param] = rows.detach().to(param.device, torch.int64)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.to_dense() if p.grad.is_sparse else p.grad
                mask = torch.zeros(p.shape[0], 1, dtype=grad.dtype, device=grad.device)
                rows = self._selected.get(p)
                if rows is not None:
                    mask[rows] = 1
                p.grad = grad.mul_(mask)  # in place, as the reference implementations do
        self._selected.clear()
        super().step()
        return loss
