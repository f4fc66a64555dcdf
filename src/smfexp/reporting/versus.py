"""Two runs on the same items: a lever against the default, probe by probe.

Each run's own paired interval is against the base model, so two runs whose changes differ
by less than that interval look alike even when every article moved the same way in both.
Scored on the same items (the same fact draw and probes), their difference is paired too:
:func:`~smfexp.eval.paired.difference_between_runs` resamples the items of both runs
together, which is how a lever's 0.2% on WikiText becomes a finding or not one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from smfexp.eval.item_scores import load_item_scores
from smfexp.eval.paired import (
    Items,
    ProbeItems,
    difference_between_runs,
    difference_of_changes,
)

TARGET = "target"
BEYOND = "beyond held-out"
MATCH = 1e-8  # the same items: before-totals equal to the digits items.json keeps
# The same base model scoring the same items on another machine or thread count differs in
# its bf16 log-prob totals (reductions and batches run in another order): by up to 4% of a
# few-token answer's (0.2 nats), 1e-3 of a WikiText article's (seen between two machines).
# Within this share of every item's total, and with every item's size (den) equal, the items
# are the same; the second run's totals are then moved by its own start's difference, so
# each run's change is its own. Another fact draw's items differ by far more.
SCORING_NOISE = 0.05
RATES = ("exact_match", "f1", "accuracy")  # shares of items: in points, as the tables show them
HEADLINE = (("beyond held-out", "exact_match"), ("wikitext", "word_perplexity"),
            ("retention", "logprob"), ("nq_open", "answer_logprob"),
            ("triviaqa", "answer_logprob"))  # the report's columns, listed first


@dataclass(frozen=True)
class Versus:
    """One metric of two runs: each run's change and their paired difference."""

    probe: str
    metric: str
    unit: str  # "%" (relative change) or "points" (x100 of a rate: exact match, F1)
    first: float
    second: float
    difference: float
    interval: tuple[float, float] | None
    n: int

    @property
    def resolved(self) -> bool:
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)


def _same(a: Items, b: Items, noise: float = MATCH) -> bool:
    """The same items: as many, the same sizes, and totals equal to within ``noise``."""
    return a.n == b.n and a.link == b.link and all(
        math.isclose(x, y, rel_tol=MATCH, abs_tol=MATCH)
        for x, y in zip(a.den, b.den, strict=True)) and all(
        math.isclose(x, y, rel_tol=noise, abs_tol=MATCH)
        for x, y in zip(a.num, b.num, strict=True))


def _aligned(after: Items, own_start: Items, shared_start: Items) -> Items:
    """``after`` moved item by item from its own start onto the shared one: its change
    against the shared start is its change against its own."""
    num = tuple(a - o + s for a, o, s in zip(after.num, own_start.num, shared_start.num,
                                             strict=True))
    return Items(num, after.den, after.link)


def _change(before: Items, after: Items, relative: bool) -> float:
    """A run's change as the tables show it: % of the start, or points of a rate."""
    start = before.value()
    if not relative:
        return 100.0 * (after.value() - start)
    return 100.0 * (after.value() - start) / abs(start) if start else math.nan


def _beyond(before: ProbeItems, first: ProbeItems, second: ProbeItems, heldout: str | None,
            metric: str) -> Versus | None:
    """Learning beyond held-out, first minus second, in points (two item sets, each paired)."""
    try:
        sets = [(second[p][metric], first[p][metric]) for p in (TARGET, heldout)]
        start = [before[p][metric] for p in (TARGET, heldout)]
        point, ci = difference_of_changes(*sets)  # type: ignore[arg-type]
    except (KeyError, ValueError):
        return None

    def gain(after: ProbeItems) -> float:
        return 100.0 * ((after[TARGET][metric].value() - start[0].value())
                        - (after[heldout][metric].value() - start[1].value()))

    return Versus(BEYOND, metric, "points", gain(first), gain(second), 100.0 * point,
                  None if ci is None else (100.0 * ci[0], 100.0 * ci[1]), sets[0][0].n)


def compare_runs(first_dir: Path, second_dir: Path, facts: int | None = None
                 ) -> tuple[list[Versus], list[str]]:
    """Every metric both runs scored on the same items (at their end, or after ``facts``),
    and the probes left out because the runs scored different items there."""
    before, first, heldout = load_item_scores(first_dir, facts)
    before_second, second, _ = load_item_scores(second_dir, facts)
    rows: list[Versus] = []
    skipped: list[str] = []
    for probe, metrics in first.items():
        for metric, after_first in metrics.items():
            start, after_second = before.get(probe, {}).get(metric), second.get(probe, {}).get(
                metric)
            start_second = before_second.get(probe, {}).get(metric)
            if start is None or after_second is None or start_second is None:
                continue
            if not _same(start, start_second, SCORING_NOISE):
                skipped.append(f"{probe}/{metric}")
                continue
            if not _same(start, start_second):  # scoring noise: each run's own change
                after_second = _aligned(after_second, start_second, start)
            change = difference_between_runs(start, after_first, after_second)
            relative = change.rel_pct is not None and metric not in RATES
            point, ci = (change.rel_pct, change.rel_ci) if relative else (
                100.0 * change.delta,
                None if change.delta_ci is None else tuple(100.0 * x for x in change.delta_ci))
            rows.append(Versus(probe, metric, "%" if relative else "points",
                               _change(start, after_first, relative),
                               _change(start, after_second, relative), point, ci, change.n))
    if f"{TARGET}/exact_match" not in skipped:  # what the gain beyond held-out is read from
        beyond = _beyond(before, first, second, heldout, "exact_match")
        rows.extend([beyond] if beyond else [])
    rank = {key: i for i, key in enumerate(HEADLINE)}
    rows.sort(key=lambda r: rank.get((r.probe, r.metric), len(rank)))
    return rows, sorted(set(skipped))


def versus_markdown(first_dir: Path, second_dir: Path, facts: int | None = None) -> str:
    """The comparison as a Markdown table, the runs named as given."""
    rows, skipped = compare_runs(first_dir, second_dir, facts)
    at = "at the end of each run" if facts is None else f"after {facts} facts"
    lines = [
        f"First: `{first_dir}`  ",
        f"second: `{second_dir}`, {at}. Each run's change against the base model, then "
        "first − second with its 95% interval paired over the probe's items (both runs' "
        "items resampled together); ✓ where it excludes 0. % for relative changes (+ = "
        "higher: worse for perplexity, better for log-probs), points for rates.",
        "",
        "| probe | metric | first | second | first − second | 95% interval | items | resolved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        interval = "-" if r.interval is None else f"[{r.interval[0]:+.3g}, {r.interval[1]:+.3g}]"
        lines.append(f"| {r.probe} | {r.metric} | {r.first:+.3g} {r.unit} | "
                     f"{r.second:+.3g} {r.unit} | {r.difference:+.3g} {r.unit} | {interval} | "
                     f"{r.n} | {'✓' if r.resolved else ''} |")
    if skipped:
        lines += ["", f"Not compared (the runs scored different items - another fact draw "
                      f"or probe size): {', '.join(skipped)}."]
    return "\n".join(lines)
