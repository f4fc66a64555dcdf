"""Each probe's own 95% interval of its change: after vs before training on the same items.

A forgetting number mixes two kinds of noise: which facts a draw trained (the interval over
draws in the report) and which articles, paragraphs or questions the probe happens to hold
(this module). Every metric a probe reports is a ratio of per-item totals pushed through a
link, ``value = link(sum(num) / sum(den))``: WikiText word perplexity is
``exp(-sum log-lik / sum words)`` over articles, retention log-prob the mean over the words of
its paragraphs, exact match the mean over questions. So the change of any metric, and its
relative change in %, are functions of the paired per-item totals, and one paired bootstrap
over items (``scipy.stats.bootstrap``, BCa) gives their intervals. The held-out correction of
fact learning (trained facts' gain minus held-out questions' gain) compares two independent
item sets, so its interval resamples each set on its own.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 4000
SEED = 0  # the resampling is part of the protocol: the same items give the same interval

LINKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "exp_neg": lambda x: np.exp(-x),             # perplexity from a mean negative log-lik
    "neg": lambda x: -x,                         # loss from a mean log-lik
    "neg_log2": lambda x: -x / math.log(2),      # bits per byte
}


@dataclass(frozen=True)
class Items:
    """Per-item totals of one metric: ``value = link(sum(num) / sum(den))``."""

    num: tuple[float, ...]
    den: tuple[float, ...]
    link: str = "identity"

    def __post_init__(self) -> None:
        if len(self.num) != len(self.den):
            raise ValueError(f"items: {len(self.num)} numerators but {len(self.den)} "
                             "denominators")
        if self.link not in LINKS:
            raise ValueError(f"items: link {self.link!r} is not valid; valid: {list(LINKS)}")

    @classmethod
    def means(cls, values: list[float]) -> Items:
        """A metric that is the plain mean of one value per item (exact match, F1)."""
        return cls(tuple(float(v) for v in values), (1.0,) * len(values))

    @property
    def n(self) -> int:
        return len(self.num)

    def value(self) -> float:
        den = math.fsum(self.den)
        if not self.num or den == 0:
            return math.nan
        return float(LINKS[self.link](np.float64(math.fsum(self.num) / den)))

    def to_json(self) -> dict[str, Any]:
        return {"num": list(self.num), "den": list(self.den), "link": self.link}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Items:
        return cls(tuple(float(x) for x in data["num"]), tuple(float(x) for x in data["den"]),
                   str(data.get("link", "identity")))


ProbeItems = dict[str, dict[str, Items]]  # probe -> metric -> items


def items_to_json(items: ProbeItems) -> dict[str, dict[str, Any]]:
    return {p: {m: it.to_json() for m, it in metrics.items()} for p, metrics in items.items()}


def items_from_json(data: Mapping[str, Any]) -> ProbeItems:
    return {str(p): {str(m): Items.from_json(v) for m, v in metrics.items()}
            for p, metrics in data.items()}


# --------------------------------------------------------------------------- statistics
def _value(num: np.ndarray, den: np.ndarray, link: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return LINKS[link](num.sum(axis=-1) / den.sum(axis=-1))


def _interval(data: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray],
              paired: bool, point: float) -> tuple[float, float] | None:
    """BCa bootstrap interval of ``statistic``; a degenerate sample (every resample gives
    the same value, e.g. exact match 0 before and after) is the point itself. None when
    resamples leave the statistic undefined (a relative change from a start that can be 0)."""
    if not math.isfinite(point):
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # DegenerateDataWarning and NaN resamples: below
        res = stats.bootstrap(data, statistic, paired=paired, vectorized=True, axis=-1,
                              confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                              method="BCa", rng=np.random.default_rng(SEED))
        resampled = np.asarray(res.bootstrap_distribution, dtype=float)
        if not np.isfinite(resampled).all():
            return None
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return (low, high)
        if float(np.ptp(resampled)) <= 1e-12 * max(1.0, abs(point)):
            return (point, point)
        low, high = (float(q) for q in np.quantile(resampled, [(1 - CONFIDENCE) / 2,
                                                               (1 + CONFIDENCE) / 2]))
    return (low, high)


@dataclass(frozen=True)
class PairedChange:
    """A metric's change after vs before on the same items, with its 95% intervals."""

    delta: float
    delta_ci: tuple[float, float] | None  # None: fewer than 2 items, or undefined
    rel_pct: float | None
    rel_ci: tuple[float, float] | None
    n: int

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: the probe itself tells this change from no change."""
        interval = self.rel_ci if self.rel_ci is not None else self.delta_ci
        return interval is not None and bool(interval[0] > 0 or interval[1] < 0)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"delta": None if self.delta_ci is None else list(self.delta_ci),
                               "n": self.n, "resolved": self.resolved}
        if self.rel_ci is not None:
            out["rel_delta_pct"] = list(self.rel_ci)
        return out


def _paired_difference(start: Items, first: Items, second: Items) -> PairedChange:
    """``first - second`` in the metric's units and in % of ``start``, every item set
    resampled with the same indices (``second`` may be ``start`` itself: a run's change)."""
    link = start.link
    distinct = [start, *(x for x in (first, second) if x is not start)]
    data = tuple(np.asarray(v, dtype=float) for it in distinct for v in (it.num, it.den))
    where = [next(2 * i for i, it in enumerate(distinct) if it is x) for x in (start, first,
                                                                               second)]

    def values(arrays: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        return [_value(arrays[i], arrays[i + 1], link) for i in where]

    def delta(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
        _, a, b = values(arrays)
        return a - b

    def rel(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
        s, a, b = values(arrays)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100.0 * (a - b) / np.abs(s)

    origin = start.value()
    point = first.value() - second.value()
    n = start.n
    if n < 2:
        return PairedChange(point, None, None, None, n)
    delta_ci = _interval(data, delta, True, point)
    if origin == 0 or not math.isfinite(origin):
        return PairedChange(point, delta_ci, None, None, n)
    rel_point = 100.0 * point / abs(origin)
    return PairedChange(point, delta_ci, rel_point, _interval(data, rel, True, rel_point), n)


def paired_change(before: Items, after: Items) -> PairedChange:
    """Change of one metric and its paired bootstrap intervals (items resampled together)."""
    if before.n != after.n or before.link != after.link:
        raise ValueError(f"paired items differ: {before.n} ({before.link}) before, "
                         f"{after.n} ({after.link}) after; score the same rows both times")
    return _paired_difference(before, after, before)


def difference_between_runs(before: Items, first: Items, second: Items) -> PairedChange:
    """``change(first) - change(second)``: two runs scored on the same items as their shared
    ``before`` (a lever against the default on the same fact draw), items resampled together.

    ``delta`` is ``value(first) - value(second)``; ``rel_pct`` the difference of the two
    relative changes in % of the shared start, the difference of the numbers a results table
    shows side by side. Pairing removes what the items share: which articles or paragraphs
    the probe happens to hold moves both runs alike, so a lever's effect resolves far below
    either run's own interval against the base.
    """
    if not before.n == first.n == second.n or not before.link == first.link == second.link:
        raise ValueError(f"the runs scored different items: {before.n} before, {first.n} and "
                         f"{second.n} after; compare runs of the same fact draw and probes")
    return _paired_difference(before, first, second)


def difference_of_changes(first: tuple[Items, Items], second: tuple[Items, Items]
                          ) -> tuple[float, tuple[float, float] | None]:
    """``change(first) - change(second)`` over two independent item sets (the trained facts'
    gain minus the held-out questions' gain) and its interval, each set resampled on its own.

    Needs metrics that are plain means of per-item values (den 1, identity link), whose
    change is the mean of per-item differences.
    """
    diffs = []
    for before, after in (first, second):
        if before.n != after.n or before.link != "identity" or any(
                d != 1.0 for d in (*before.den, *after.den)):
            raise ValueError("difference_of_changes needs per-item means on the same items")
        diffs.append(np.asarray(after.num, dtype=float) - np.asarray(before.num, dtype=float))
    point = float(diffs[0].mean() - diffs[1].mean())
    if min(len(d) for d in diffs) < 2:
        return point, None

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return x.mean(axis=axis) - y.mean(axis=axis)

    return point, _interval((diffs[0], diffs[1]), statistic, False, point)


def paired_changes(before: ProbeItems, after: ProbeItems) -> dict[str, dict[str, Any]]:
    """``{probe: {metric: PairedChange.to_json()}}`` for every metric scored both times on
    the same number of items (results.json ``paired_ci``)."""
    out: dict[str, dict[str, Any]] = {}
    for probe, metrics in after.items():
        for metric, items in metrics.items():
            start = before.get(probe, {}).get(metric)
            if start is None or start.n != items.n:
                continue
            out.setdefault(probe, {})[metric] = paired_change(start, items).to_json()
    return out


def beyond_heldout_ci(before: ProbeItems, after: ProbeItems, target: str,
                      heldout: str) -> dict[str, list[float]]:
    """Interval of the gain beyond held-out per metric both probes score as per-item means."""
    out: dict[str, list[float]] = {}
    for metric in after.get(target, {}):
        pairs = [(before.get(p, {}).get(metric), after.get(p, {}).get(metric))
                 for p in (target, heldout)]
        if any(b is None or a is None for b, a in pairs):
            continue
        try:
            _, ci = difference_of_changes(*pairs)  # type: ignore[arg-type]
        except ValueError:
            continue
        if ci is not None:
            out[metric] = list(ci)
    return out
