"""The child results of one suite run, read the way every section reads them: medians of the
timed repetitions, peak RSS, and a status cell for a configuration that has no timings."""

from __future__ import annotations

from typing import Any

from cases import med
from mdtable import fnum
from suite_plan import Settings

from .cells import status


class Results:
    """``{configuration id: child result}`` of one run, with its settings."""

    def __init__(self, s: Settings, results: dict[str, dict[str, Any]]) -> None:
        self.s, self.res = s, results

    def r(self, key: str) -> dict[str, Any] | None:
        return self.res.get(key)

    def wall(self, key: str) -> float | None:
        r = self.r(key)
        return med(r.get("wall")) if r and not status(r) else None

    def cpu(self, key: str) -> float | None:
        r = self.r(key)
        return med(r.get("cpu")) if r and not status(r) else None

    def rss(self, key: str) -> int | None:
        r = self.r(key)
        return r.get("peak_rss") if r and "error" not in r and "skipped" not in r else None

    def cells(self, key: str) -> list[str]:
        """median wall, median CPU (or the status)."""
        st = status(self.r(key))
        return [st, st] if st else [fnum(self.wall(key)), fnum(self.cpu(key))]
