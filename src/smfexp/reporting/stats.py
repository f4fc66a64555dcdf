"""Mean and 95% t-interval over draws, and each run's own paired interval: the one place the
report's error bars come from.

A draw is one replicate of a grid point (another ``data.facts_seed`` and/or ``seed``). At
16 facts one fact is 6 points, so a number without its spread over draws says little; with
3 draws the t quantile (4.30) is what makes the interval honest, not the normal 1.96.

The paired interval (results.json ``paired_ci``) is the other noise: which articles,
paragraphs or questions the probe holds, after vs before on the same items. A change inside
it is not resolved by the probe, however tight the interval over draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
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


def paired_difference(mine: Mapping[str, float], ref: Mapping[str, float]) -> MeanCI:
    """Mean and 95% t-interval of ``ref - mine`` over the draws both ran: the same facts in
    both, so what a draw's facts do to both cancels (tighter than two intervals side by
    side when the draws disagree more than the methods do)."""
    return mean_ci([ref[k] - mine[k] for k in mine if k in ref])


def paired_text(mine: Mapping[str, float], ref: Mapping[str, float]) -> str:
    """``+2.8 ± 2.1 (n=3) separate`` - baseline minus SMF per shared draw, ``separate`` when
    its interval excludes 0, ``covers 0`` when not; ``n<2`` without two shared draws."""
    diff = paired_difference(mine, ref)
    if not diff.has_interval:
        return "n<2"
    verdict = "covers 0" if diff.low <= 0 <= diff.high else "separate"
    return f"{diff.mean:+.3g} ± {diff.half:.2g} (n={diff.n}) {verdict}"


def fmt_ci(ci: MeanCI, signed: bool = False, digits: str = ".4g", unit: str = "",
           show_n: bool = True, of: int | None = None, probe: ProbeCI | None = None) -> str:
    """``+1.25% ± 0.31 (n=3)``; ``+1.25% (n=1, no CI)``; ``–`` without values. ``of``: the
    draws there were (``n=2 of 3 draws``); ``probe``: the runs' own paired interval, added as
    ``; probe ± 0.4`` and a trailing ``†`` when it covers 0 around the mean."""
    if ci.n == 0 or not math.isfinite(ci.mean):
        return "–"
    text = f"{ci.mean:{'+' if signed else ''}{digits}}{unit}"
    if ci.has_interval:
        text += f" ± {ci.half:.2g}"
    inside = []
    if show_n:
        inside.append(f"n={ci.n} of {of} draws" if of is not None and ci.n < of else
                      f"n={ci.n}" if ci.n > 1 else "n=1, no CI")
    if probe is not None:
        inside.append(f"probe ± {probe.half:.2g}")
    if inside:
        text += f" ({'; '.join(inside)})"
    if probe is not None and probe.covers_zero(ci.mean):
        text += f" {UNRESOLVED}"
    return text


# --------------------------------------------------------------------------- paired intervals
UNRESOLVED = "†"
UNRESOLVED_NOTE = (f"{UNRESOLVED} the run's own paired interval covers 0: not resolved by the "
                   "probe (over several draws: the mean ± the probe's typical interval).")


@dataclass(frozen=True)
class ProbeCI:
    """A run's own paired 95% interval, kept as offsets from its value (low - value, high -
    value), so the typical one over draws can sit around their mean or an interpolation."""

    below: float
    above: float

    @classmethod
    def around(cls, value: object, low: object, high: object) -> ProbeCI | None:
        """From a value and its interval; None when any of them is missing or not finite."""
        nums = [_finite(v) for v in (value, low, high)]
        if any(v is None for v in nums):
            return None
        center, lo, hi = nums
        return cls(lo - center, hi - center)  # type: ignore[operator]

    @property
    def half(self) -> float:
        return (self.above - self.below) / 2

    def covers_zero(self, value: float) -> bool:
        return value + self.below <= 0 <= value + self.above

    def blend(self, other: ProbeCI, t: float) -> ProbeCI:
        """Linear interpolation towards ``other`` (t = 0: self), as the value is along a
        frontier segment."""
        return ProbeCI(self.below + t * (other.below - self.below),
                       self.above + t * (other.above - self.above))


def typical_probe_ci(cis: Iterable[ProbeCI | None]) -> ProbeCI | None:
    """The median offsets over the runs that have an interval; None when none has."""
    found = [c for c in cis if c is not None]
    if not found:
        return None
    return ProbeCI(float(np.median([c.below for c in found])),
                   float(np.median([c.above for c in found])))


def _finite(value: object) -> float | None:
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool) \
            and math.isfinite(float(value)):
        return float(value)
    return None
