"""Mean and 95% t-interval over draws: the one place the report's error bars come from.

A draw is one replicate of a grid point (another ``data.facts_seed`` and/or ``seed``). At
16 facts one fact is 6 points, so a number without its spread over draws says little; with
3 draws the t quantile (4.30) is what makes the interval honest, not the normal 1.96.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
# two-sided 95% t quantiles t_{0.975, df}: used only when scipy is missing
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}


def t_quantile(df: int) -> float:
    """t_{0.975, df}; from scipy when installed, else the nearest tabulated df below."""
    if df < 1:
        return math.nan
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + CONFIDENCE / 2, df))
    except ImportError:
        known = max(k for k in _T975 if k <= df)
        return _T975[known] if df <= 60 else 1.960


@dataclass(frozen=True)
class MeanCI:
    """Mean over ``n`` draws and the half-width of its 95% t-interval (NaN for n < 2)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    @property
    def has_interval(self) -> bool:
        return self.n > 1 and math.isfinite(self.half)


def mean_ci(values: Iterable[float | None]) -> MeanCI:
    """Mean +- t_{0.975,n-1} * sd / sqrt(n) over the finite values (None/NaN skipped)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(float(v))],
                     dtype=float)
    n = int(arr.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0)
    mean = float(arr.mean())
    if n == 1:
        return MeanCI(mean, math.nan, 1)
    half = t_quantile(n - 1) * float(arr.std(ddof=1)) / math.sqrt(n)
    if half <= 1e-12 * max(1.0, abs(mean)):  # identical draws up to float rounding
        half = 0.0
    return MeanCI(mean, half, n)


def ci_half(values: Iterable[float | None]) -> float:
    """Just the half-width (for DataFrame aggregations); NaN below 2 values."""
    return mean_ci(values).half


def overlap(a: MeanCI, b: MeanCI) -> bool | None:
    """Whether two intervals overlap; None when either has no interval (n < 2)."""
    if not (a.has_interval and b.has_interval):
        return None
    return a.low <= b.high and b.low <= a.high


def overlap_text(a: MeanCI, b: MeanCI) -> str:
    """``overlap`` / ``separate`` / ``n<2`` for the matched-learning comparison column."""
    found = overlap(a, b)
    if found is None:
        return "n<2"
    return "overlap" if found else "separate"


def fmt_ci(ci: MeanCI, signed: bool = False, digits: str = ".4g", unit: str = "",
           show_n: bool = True) -> str:
    """``+1.25% ± 0.31 (n=3)``; ``+1.25% (n=1, no CI)``; ``–`` without values."""
    if ci.n == 0 or not math.isfinite(ci.mean):
        return "–"
    text = f"{ci.mean:{'+' if signed else ''}{digits}}{unit}"
    if ci.has_interval:
        text += f" ± {ci.half:.2g}"
    if show_n:
        text += f" (n={ci.n})" if ci.n > 1 else " (n=1, no CI)"
    return text
