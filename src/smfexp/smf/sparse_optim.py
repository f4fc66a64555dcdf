"""Row-exact sparse optimizers for memory value tables.

SMF promises that an optimizer step changes only the rows the selector chose. Masking the
gradient and running AdamW over the whole table breaks that promise (momentum and weight
decay keep moving rows selected earlier) and costs O(table) per step. The optimizers here
instead

* read only the selected rows' gradients (a sparse COO grad from
  ``embedding_bag(sparse=True)`` is reduced straight into an [S, D] buffer; dense grads work
  too),
* keep optimizer state lazily, per row: ``row_to_slot`` ([n_rows] int64, -1 = no state) maps
  a table row to a row of compact state tensors that grow by amortised doubling, so memory is
  ~ rows ever selected x D, never n_rows x D,
* advance a row's state only when that row is selected, and write back with ``index_copy_``:
  every other row of the table stays bit-identical.

A step costs O(nnz of the grad + selected rows x D), independent of the table size.
Usage per optimizer step: ``opt.set_selected_rows(values, rows)`` then ``opt.step()``; the
selection is consumed by the step (a stale selection is never reused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from smfexp.memory.deferred import match_rows


def selected_grad_rows(grad: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient of the selected ``rows`` (sorted, unique) as a dense [S', D] block.

    For a sparse COO grad, rows absent from it (not read in the step) are dropped from the
    returned ``rows``: updating them would only replay old momentum. Duplicate entries of an
    uncoalesced grad are summed. Cost ~ nnz * log S, with no pass over the table.
    """
    if not grad.is_sparse:
        return rows, grad.index_select(0, rows)
    if grad.sparse_dim() != 1:
        raise ValueError("sparse grads must be row-sparse (sparse_dim 1), as embedding_bag's")
    vals = grad._values()
    n_sel = rows.numel()
    if n_sel == 0:
        return rows, vals.new_zeros((0, *vals.shape[1:]))
    hit, pos_hit = match_rows(rows, grad._indices()[0].contiguous())
    buf = vals.new_zeros((n_sel, *vals.shape[1:]))
    buf.index_add_(0, pos_hit, vals.index_select(0, hit))
    present = torch.zeros(n_sel, dtype=torch.bool, device=rows.device)
    present[pos_hit] = True
    keep = present.nonzero().squeeze(1)
    if keep.numel() == n_sel:
        return rows, buf
    return rows.index_select(0, keep), buf.index_select(0, keep)


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[Tensor], max_norm: float, eps: float = 1e-6) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (L2) that also accepts sparse COO grads.

    torch's version raises on ``embedding_bag(sparse=True)`` grads. Sparse grads are coalesced
    first (duplicate reads must be summed before squaring; cost ~ nnz log nnz, no pass over
    the table) and stay coalesced, which the row-sparse optimizers accept as well.
    Returns the total norm before clipping.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    norms = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            norms.append(torch.linalg.vector_norm(p.grad._values(), 2.0))
        else:
            norms.append(torch.linalg.vector_norm(p.grad, 2.0))
    device = norms[0].device
    total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2.0)
    coef = (max_norm / (total + eps)).clamp(max=1.0)
    for p in params:
        g = p.grad._values() if p.grad.is_sparse else p.grad
        g.mul_(coef.to(g.device, g.dtype))
    return total


class _RowSparseOptimizer(Optimizer):
    """Shared machinery: selection bookkeeping, lazy per-row state, compact state_dict."""

    _float_state: tuple[str, ...] = ()  # [capacity, D] tensors, in the param's dtype
    _int_state: tuple[str, ...] = ()  # [capacity] int64 tensors besides "slot_rows"

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
    ) -> None:
        super().__init__(params, defaults)
        self._selected: dict[Tensor, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"row-sparse optimizers need 2-D tables, got {tuple(p.shape)}")

    # -- selection -----------------------------------------------------------------------

    def set_selected_rows(self, param: Tensor, rows: Tensor) -> None:
        """Rows of ``param`` the next :meth:`step` may change (deduplicated and sorted)."""
        if not any(param is q for g in self.param_groups for q in g["params"]):
            raise KeyError("param is not managed by this optimizer")
        self._selected[param] = torch.unique(rows.detach().to(param.device, torch.int64))

    def _take_rows(self, p: Tensor) -> Tensor:
        """This step's selection for ``p``; a grad without one is a bug, so it is loud."""
        rows = self._selected.pop(p, None)
        if rows is None:
            raise RuntimeError("param has a gradient but no selected rows; call "
                               "set_selected_rows() before step()")
        return rows

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    rows = self._take_rows(p)
                    if rows.numel() == 0:
                        continue
                    rows, grad = selected_grad_rows(p.grad, rows)
                    if rows.numel():
                        self._update_rows(p, rows, grad.to(p.dtype), group)
        finally:
            self._selected.clear()
        return loss

    def _update_rows(self, p: Tensor, rows: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError

    # -- lazy per-row state --------------------------------------------------------------

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        state["row_to_slot"] = torch.full((p.shape[0],), -1, dtype=torch.int64, device=p.device)
        state["slot_rows"] = torch.empty(0, dtype=torch.int64, device=p.device)
        for name in self._float_state:
            state[name] = p.new_empty((0, p.shape[1]))
        for name in self._int_state:
            state[name] = torch.empty(0, dtype=torch.int64, device=p.device)
        state["n_used"] = 0

    def _reserve(self, p: Tensor, state: dict[str, Any], need: int) -> None:
        """Grow the compact state to hold ``need`` rows (amortised doubling, capped at n_rows)."""
        cap = state["slot_rows"].numel()
        if need <= cap:
            return
        new_cap = min(p.shape[0], max(need, 2 * cap))
        n = state["n_used"]
        for name in ("slot_rows", *self._int_state, *self._float_state):
            old = state[name]
            new = old.new_zeros((new_cap, *old.shape[1:]))
            if name == "slot_rows":
                new.fill_(-1)
            new[:n] = old[:n]
            state[name] = new

    def _slots(self, p: Tensor, rows: Tensor) -> Tensor:
        """State slots of ``rows``, allocating zero-initialised slots for first-time rows."""
        state = self.state[p]
        if "row_to_slot" not in state:
            self._init_state(p, state)
        slots = state["row_to_slot"].index_select(0, rows)
        new = (slots < 0).nonzero().squeeze(1)
        n_new = new.numel()
        if n_new:
            n0 = state["n_used"]
            self._reserve(p, state, n0 + n_new)
            fresh = torch.arange(n0, n0 + n_new, dtype=torch.int64, device=rows.device)
            new_rows = rows.index_select(0, new)
            slots.index_copy_(0, new, fresh)
            state["row_to_slot"].index_copy_(0, new_rows, fresh)
            state["slot_rows"][n0 : n0 + n_new] = new_rows
            state["n_used"] = n0 + n_new
        return slots

    def touched_rows(self, param: Tensor) -> Tensor:
        """Table rows that have optimizer state (were ever updated), in first-update order."""
        state = self.state.get(param, {})
        if "slot_rows" not in state:
            return torch.empty(0, dtype=torch.int64, device=param.device)
        return state["slot_rows"][: state["n_used"]]

    def state_bytes(self) -> int:
        """Bytes held in optimizer state (for logging; includes the row_to_slot maps)."""
        return sum(
            v.numel() * v.element_size()
            for st in self.state.values()
            for v in st.values()
            if isinstance(v, Tensor)
        )

    # -- checkpointing -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Compact state: only used slots are saved; ``row_to_slot`` is rebuilt on load."""
        sd = super().state_dict()
        packed = {}
        for idx, st in sd["state"].items():
            if "n_used" not in st:
                packed[idx] = dict(st)
                continue
            n = st["n_used"]
            out: dict[str, Any] = {"n_used": n, "n_rows": int(st["row_to_slot"].numel())}
            for name in ("slot_rows", *self._int_state, *self._float_state):
                out[name] = st[name][:n].clone()
            packed[idx] = out
        sd["state"] = packed
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore groups via torch, then rebuild the lazy state with exact dtypes.

        (torch's loader would cast every tensor, int64 indices included, to the param dtype.)
        """
        saved_state = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        id_map = dict(zip(saved_ids, params, strict=True))
        for key, st in saved_state.items():
            p = id_map[key]
            if "n_used" not in st:
                continue
            if st["n_rows"] != p.shape[0]:
                raise ValueError(f"state for {st['n_rows']} rows, param has {p.shape[0]}")
            n = int(st["n_used"])
            state: dict[str, Any] = {"n_used": n}
            state["slot_rows"] = st["slot_rows"].to(p.device, torch.int64).clone()
            for name in self._int_state:
                state[name] = st[name].to(p.device, torch.int64).clone()
            for name in self._float_state:
                state[name] = st[name].to(p.device, p.dtype).clone()
            r2s = torch.full((p.shape[0],), -1, dtype=torch.int64, device=p.device)
            r2s[state["slot_rows"]] = torch.arange(n, dtype=torch.int64, device=p.device)
            state["row_to_slot"] = r2s
            self.state[p] = state


class RowSparseSGD(_RowSparseOptimizer):
    """SGD (optional heavy-ball momentum, L2 weight decay) on the selected rows only.

    Same update as ``torch.optim.SGD`` (dampening 0, buffer initialised to the first grad)
    restricted to selected rows; a row's momentum buffer is frozen while it is unselected.
    Lin et al. found plain SGD forgets less than AdamW for SMF.
    """

    _float_state = ("momentum_buffer",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _update_rows(self, p: Tensor, rows: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        values = p.index_select(0, rows)
        d = grad
        if group["weight_decay"]:
            d = d.add(values, alpha=group["weight_decay"])
        if group["momentum"]:
            slots = self._slots(p, rows)
            buf_all = self.state[p]["momentum_buffer"]
            # Fresh slots are zero, so mu * 0 + g = g: torch's first-step initialisation.
            buf = buf_all.index_select(0, slots).mul_(group["momentum"]).add_(d)
            buf_all.index_copy_(0, slots, buf)
            d = buf
        p.index_copy_(0, rows, values.add_(d, alpha=-group["lr"]))


class RowSparseAdam(_RowSparseOptimizer):
    """Adam with lazy per-row moments and per-row step counts (bias correction per row).

    Matches ``torch.optim.AdamW`` on the selected rows when every row is selected every
    step; ``weight_decay`` is decoupled (AdamW style) and only applied to selected rows.
    """

    _float_state = ("exp_avg", "exp_avg_sq")
    _int_state = ("row_step",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("invalid Adam hyperparameters")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    def _update_rows(self, p: Tensor, rows: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        slots = self._slots(p, rows)
        st = self.state[p]
        m = st["exp_avg"].index_select(0, slots).lerp_(grad, 1 - beta1)
        v = st["exp_avg_sq"].index_select(0, slots).mul_(beta2)
        v.addcmul_(grad, grad, value=1 - beta2)
        k = st["row_step"].index_select(0, slots).add_(1)
        kf = k.double()
        bias1 = 1 - torch.pow(beta1, kf)
        bias2_sqrt = (1 - torch.pow(beta2, kf)).sqrt()
        step_size = (lr / bias1).to(p.dtype).unsqueeze(1)
        denom = (v.sqrt() / bias2_sqrt.to(p.dtype).unsqueeze(1)).add_(eps)
        values = p.index_select(0, rows)
        if wd:
            values.mul_(1 - lr * wd)
        values.sub_(m / denom * step_size)
        p.index_copy_(0, rows, values)
        st["exp_avg"].index_copy_(0, slots, m)
        st["exp_avg_sq"].index_copy_(0, slots, v)
        st["row_step"].index_copy_(0, slots, k)
