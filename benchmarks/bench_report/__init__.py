"""The benchmark suite's Markdown report (BENCHMARKS.md), one job per module:

- ``results``: the child results of a run, read as medians, peak RSS or a status cell;
- ``cells``: the suite's cells beyond plain numbers (ratios, yes/no, met/not met);
- ``facts``: sections 1-5, the fact stream and its targets (issue 24);
- ``old_shape``: sections 6-9, forward, training step, SMF scaling and peak memory at the old
  shape (issue 5);
- ``evaluation``: section 10, the scorers against lm-evaluation-harness;
- ``page``: the whole file.

Tables and number formats come from ``benchmarks/mdtable.py`` (shared with the GPU check).
"""

from __future__ import annotations

import datetime
from typing import Any

from .facts import fact_sections
from .page import render
from .results import Results


class Report(Results):
    """One run's results as the report's sections and as the whole file."""

    def facts(self) -> list[str]:
        """Sections 1-5: fact step, phases, peak memory, targets, real-run stream times."""
        return fact_sections(self)

    def render(self, machine: dict[str, Any], command: str, sections: list[str],
               started: datetime.datetime, seconds: float) -> str:
        return render(self, machine, command, sections, started, seconds)
