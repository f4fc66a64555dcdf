"""A bound on how far a value row may move from where training started (cf. WISE's norm
constraint): the rows SMF writes carry much of general text's reads, so capping their total
change caps what general text can see changed, however many facts write them.

The bound is in the unit of ``lr_unit=row_rms`` steps: ``max_change`` x the RMS of a freshly
initialised value row, ``v_dim^-1/2``, per element - an L2 norm of ``max_change`` per row.
After each optimizer step the rows that step wrote are checked; a row whose change since the
start (value minus starting value) exceeds the bound is scaled back onto it, along the same
direction. Only the starting values of rows written so far are kept (nothing for a memory that
started empty, whose starting values are 0), never a copy of the table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class RowStarts:
    """The values rows held before their first write, for the rows written so far."""

    def __init__(self, n_rows: int, dim: int, zero: bool) -> None:
        """``zero``: every row starts at 0 (an empty memory), so nothing is stored."""
        self.zero = zero
        self.dim = dim
        self.slot = torch.full((0 if zero else n_rows,), -1, dtype=torch.int64)
        self.rows = torch.empty(0, dtype=torch.int64)  # table row of each stored slot
        self.values = torch.empty((0, dim))
        self.n = 0

    def to(self, device: torch.device | str) -> RowStarts:
        self.slot, self.rows = self.slot.to(device), self.rows.to(device)
        self.values = self.values.to(device)
        return self

    def remember(self, table: Tensor, rows: Tensor) -> None:
        """Store the current values of those ``rows`` not stored yet (call before a step)."""
        if self.zero:
            return
        rows = rows.to(self.slot.device, torch.int64)
        new = rows[self.slot.index_select(0, rows) < 0]
        if new.numel() == 0:
            return
        self._reserve(self.n + new.numel(), table.dtype)
        end = self.n + new.numel()
        self.values[self.n:end] = table.detach().index_select(0, new)
        self.rows[self.n:end] = new
        self.slot[new] = torch.arange(self.n, end, device=new.device)
        self.n = end

    def _reserve(self, need: int, dtype: torch.dtype) -> None:
        """Room for ``need`` rows (amortised doubling, at most the table's rows)."""
        if need <= self.rows.numel():
            return
        cap = min(self.slot.numel(), max(need, 2 * self.rows.numel()))
        rows = self.rows.new_full((cap,), -1)
        values = self.values.new_zeros((cap, self.dim), dtype=dtype)
        rows[:self.n], values[:self.n] = self.rows[:self.n], self.values[:self.n]
        self.rows, self.values = rows, values

    def of(self, rows: Tensor, like: Tensor) -> Tensor:
        """Starting values of ``rows`` (each stored, or the memory started empty)."""
        if self.zero:
            return like.new_zeros((rows.numel(), like.shape[1]))
        slots = self.slot.index_select(0, rows.to(self.slot.device, torch.int64))
        if bool((slots < 0).any()):
            raise RuntimeError("a bounded row has no starting value: remember() it first")
        return self.values.index_select(0, slots).to(like.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"zero": self.zero, "rows": self.rows[:self.n].cpu(),
                "values": self.values[:self.n].cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if bool(state["zero"]) != self.zero:
            raise ValueError("checkpoint's starting values are for a different memory start")
        if self.zero:
            return
        device = self.slot.device
        self.n = int(state["rows"].numel())
        self.rows = state["rows"].to(device, torch.int64).clone()
        self.values = state["values"].to(device).clone()
        self.slot.fill_(-1)
        self.slot[self.rows] = torch.arange(self.n, device=device)


@torch.no_grad()
def bound_rows(table: Tensor, rows: Tensor, start: Tensor, max_rms: float) -> int:
    """Scale back each of ``rows`` whose change from ``start`` has an RMS per element above
    ``max_rms`` onto exactly that RMS; rows within it stay bit-identical. Returns how many
    rows were scaled back."""
    if rows.numel() == 0:
        return 0
    change = table.index_select(0, rows) - start
    rms = change.double().pow(2).mean(dim=1).sqrt()
    over = (rms > max_rms).nonzero().squeeze(1)
    if over.numel() == 0:
        return 0
    scale = (max_rms / rms.index_select(0, over)).to(change.dtype).unsqueeze(1)
    moved = start.index_select(0, over) + change.index_select(0, over) * scale
    table.index_copy_(0, rows.index_select(0, over), moved)
    return int(over.numel())


class RowBound:
    """``method.row_max_change`` over every memory layer: each layer's starting values of the
    rows written so far, the bound applied after each step, and how many row writes it
    scaled back (per layer). Its state travels in the run's checkpoint."""

    def __init__(self, max_change: float, tables: list[tuple[int, int, bool]]) -> None:
        """``tables``: (rows, row width, started empty) per memory layer."""
        self.max_change = max_change
        self.starts = [RowStarts(n, dim, zero) for n, dim, zero in tables]
        self.dims = [dim for _, dim, _ in tables]
        self.rows_bounded = [0] * len(tables)

    def to(self, device: torch.device | str) -> RowBound:
        self.starts = [s.to(device) for s in self.starts]
        return self

    def remember(self, layer: int, table: Tensor, rows: Tensor) -> None:
        """Keep where ``rows`` start (call before the step that writes them)."""
        self.starts[layer].remember(table, rows)

    def apply(self, tables: list[Tensor], written: list[Tensor]) -> dict[str, float]:
        """Scale each layer's rows this step wrote back within ``max_change`` row_rms steps
        of their start; returns the per-layer counts as ``smf/L<i>/rows_bounded``."""
        stats = {}
        for layer, (table, rows) in enumerate(zip(tables, written, strict=True)):
            start = self.starts[layer].of(rows, table)
            n = bound_rows(table, rows, start, self.max_change * self.dims[layer] ** -0.5)
            self.rows_bounded[layer] += n
            stats[f"smf/L{layer}/rows_bounded"] = float(n)
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"row_starts": [s.state_dict() for s in self.starts],
                "rows_bounded": list(self.rows_bounded)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "row_starts" not in state:
            raise ValueError("method.row_max_change is set but the checkpoint holds no "
                             "starting values of the written rows (resume it without)")
        for starts, saved in zip(self.starts, state["row_starts"], strict=True):
            starts.load_state_dict(saved)
        self.rows_bounded = list(state.get("rows_bounded", self.rows_bounded))
