"""The rows of the benchmarks a DataModule trains on: MedMCQA, TriviaQA, NQ-open.

One module per benchmark: its row normaliser (the canonical row schema), ``load_rows`` (on the
generic IO of :mod:`smfexp.data.sources`) and its split boundaries with the split functions.
They sit here, below :mod:`smfexp.tasks`, because both the DataModules (which rows a run
trains on) and the probes (how the held-out rows are scored) need them; the probes import
them from here, and no DataModule imports a probe.
"""

from __future__ import annotations

from typing import Any

# TriviaQA and NQ-open: the first HELDOUT_ROWS rows in file order are the held-out probe
HELDOUT_ROWS = 1000


def split_heldout(
    rows: list[dict[str, Any]], heldout: int = HELDOUT_ROWS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(held-out probe, fact pool): the first ``heldout`` rows in file order, and the rest."""
    return rows[:heldout], rows[heldout:]
