"""Write load: distinct (fact, row) writes per slot, the load a stream puts on a memory.

Rows touched saturates: once most rows were written, it no longer says how many facts share
each row. The write load does: per layer, the number of distinct (fact, row) pairs written
over the run divided by the slots, i.e. how many facts wrote a row, on average. Its nominal
value, ``top_t`` x facts / slots, assumes each fact writes ``top_t`` rows (the steps of one
fact mostly pick the same rows, so the two differ by how much they do not).

A "fact" is the unit SMF already tracks: the fact of a per-fact stream, else the optimizer
step. A unit is a run of consecutive steps on it, so a fact trained again in a later pass
counts again. Keeping it costs the rows of the current unit and one integer per layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class WriteLoad:
    """Running count of distinct (unit, row) writes per memory layer.

    Call :meth:`step` with the unit of every optimizer step, then :meth:`add` with each
    layer's written rows; :meth:`summary` is current at any time (no unit has to close).
    """

    def __init__(self, n_slots: list[int]) -> None:
        self.n_slots = [int(n) for n in n_slots]
        self.writes = [0] * len(self.n_slots)
        self.units = 0
        self.unit: int | None = None
        self.current: list[Tensor | None] = [None] * len(self.n_slots)
        # False when resumed from a checkpoint that did not record it: unknown, not 0
        self.known = True

    def step(self, unit: int) -> None:
        """Start counting ``unit``'s rows (a no-op while the unit is the same)."""
        if unit == self.unit:
            return
        self.unit = unit
        self.units += 1
        self.current = [None] * len(self.n_slots)

    def add(self, layer: int, rows: Tensor) -> None:
        """``rows`` written in ``layer`` by this step; counts those the unit had not written."""
        previous = self.current[layer]
        rows = rows.detach()
        merged = torch.unique(rows if previous is None else torch.cat([previous, rows]))
        self.writes[layer] += merged.numel() - (0 if previous is None else previous.numel())
        self.current[layer] = merged

    def summary(self, top_t: int | None, touched: list[Tensor]) -> list[dict[str, Any]]:
        """Per layer: write load, its nominal value (None without a fixed ``top_t``), the
        distinct writes behind it and the rows touched (``touched``: bool per slot)."""
        out = []
        for writes, slots, mask in zip(self.writes, self.n_slots, touched, strict=True):
            nominal = (top_t * self.units / slots
                       if top_t is not None and self.known else None)
            out.append({"write_load": writes / slots if self.known else None,
                        "write_load_nominal": nominal,
                        "distinct_writes": writes if self.known else None,
                        "rows_touched": int(mask.sum()),
                        "slots": slots})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"writes": list(self.writes), "units": self.units, "unit": self.unit,
                "current": [None if c is None else c.cpu() for c in self.current],
                "known": self.known}

    def load_state_dict(self, state: dict[str, Any] | None,
                        device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict`; ``None`` (an older checkpoint) makes the load unknown."""
        if state is None:
            self.known = False
            return
        self.writes = [int(w) for w in state["writes"]]
        self.units = int(state["units"])
        self.unit = state["unit"]
        self.current = [None if c is None else c.to(device) for c in state["current"]]
        self.known = bool(state.get("known", True))
