"""Each probe's own paired interval: the statistic against hand computations, and the
per-item totals every probe reports against the metrics it reports."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from smfexp.eval import EvalConfig
from smfexp.eval.paired import (
    Items,
    beyond_heldout_ci,
    difference_between_runs,
    difference_of_changes,
    paired_change,
    paired_changes,
)
from smfexp.tasks import load_probe_rows, score_probe_samples, select_probe_rows


def _exact_percentile_interval(before: Items, after: Items) -> tuple[float, float]:
    """The percentile bootstrap's 2.5/97.5% quantiles by enumerating every resample."""
    n = before.n
    values = []
    for idx in itertools.product(range(n), repeat=n):
        b = Items(tuple(before.num[i] for i in idx), tuple(before.den[i] for i in idx),
                  before.link)
        a = Items(tuple(after.num[i] for i in idx), tuple(after.den[i] for i in idx),
                  after.link)
        values.append(100 * (a.value() - b.value()) / abs(b.value()))
    return tuple(np.quantile(values, [0.025, 0.975]))  # type: ignore[return-value]


def test_a_perplexity_change_by_hand():
    # 4 articles: log-likelihood and words before / after; word perplexity = exp(-sum/sum)
    before = Items((-40.0, -90.0, -20.0, -55.0), (10.0, 25.0, 5.0, 15.0), "exp_neg")
    after = Items((-41.0, -90.5, -21.5, -55.2), (10.0, 25.0, 5.0, 15.0), "exp_neg")
    change = paired_change(before, after)
    start, end = math.exp(205 / 55), math.exp(208.2 / 55)
    assert change.delta == pytest.approx(end - start)
    assert change.rel_pct == pytest.approx(100 * (end / start - 1))
    # every article got worse: the interval sits above 0 and holds the point
    low, high = change.rel_ci
    assert 0 < low <= change.rel_pct <= high
    assert change.resolved and change.n == 4
    # the BCa interval lies within the exact bootstrap distribution's range
    exact_low, exact_high = _exact_percentile_interval(before, after)
    assert exact_low * 0.8 <= low and high <= exact_high * 1.2


def test_a_mean_metric_matches_the_paired_t_interval_on_many_items():
    rng = np.random.default_rng(1)
    before = rng.normal(-5.0, 1.0, 400)
    after = before + rng.normal(0.1, 0.5, 400)  # a shift of 0.1 with per-item noise
    change = paired_change(Items.means(list(before)), Items.means(list(after)))
    diff = after - before
    from scipy.stats import t

    half = t.ppf(0.975, 399) * diff.std(ddof=1) / math.sqrt(400)
    assert change.delta == pytest.approx(diff.mean())
    low, high = change.delta_ci
    assert low == pytest.approx(diff.mean() - half, abs=0.2 * half)
    assert high == pytest.approx(diff.mean() + half, abs=0.2 * half)


def test_no_change_is_not_resolved_and_a_constant_sample_collapses():
    same = Items.means([0.0] * 8)
    change = paired_change(same, same)
    assert change.delta_ci == (0.0, 0.0) and change.rel_ci is None  # before = 0: no % change
    assert not change.resolved
    noisy = Items.means([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    shuffled = Items.means([2.0, 1.0, 4.0, 3.0, 6.0, 5.0])  # same mean, items moved both ways
    assert not paired_change(noisy, shuffled).resolved


def test_paired_items_must_be_the_same_rows():
    with pytest.raises(ValueError, match="score the same rows both times"):
        paired_change(Items.means([1.0, 2.0]), Items.means([1.0, 2.0, 3.0]))


def test_beyond_heldout_is_target_gain_minus_heldout_gain_on_independent_items():
    before = {"target": {"exact_match": Items.means([0.0] * 6)},
              "triviaqa": {"exact_match": Items.means([0.0] * 5)}}
    after = {"target": {"exact_match": Items.means([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])},
             "triviaqa": {"exact_match": Items.means([0.0, 1.0, 0.0, 0.0, 0.0])}}
    point, (low, high) = difference_of_changes(
        (before["target"]["exact_match"], after["target"]["exact_match"]),
        (before["triviaqa"]["exact_match"], after["triviaqa"]["exact_match"]))
    assert point == pytest.approx(4 / 6 - 1 / 5)
    assert low <= point <= high
    assert beyond_heldout_ci(before, after, "target", "triviaqa") == {
        "exact_match": [low, high]}
    out = paired_changes(before, after)
    assert set(out) == {"target", "triviaqa"} and out["target"]["exact_match"]["n"] == 6


def test_two_runs_on_the_same_items_by_hand():
    # perplexity items: the first run loses 1 nat more than the second on every article
    before = Items((-40.0, -90.0, -20.0, -55.0), (10.0, 25.0, 5.0, 15.0), "exp_neg")
    second = Items((-41.0, -92.0, -20.5, -56.0), (10.0, 25.0, 5.0, 15.0), "exp_neg")
    first = Items((-42.0, -93.0, -21.5, -57.0), (10.0, 25.0, 5.0, 15.0), "exp_neg")
    diff = difference_between_runs(before, first, second)
    start, a, b = math.exp(205 / 55), math.exp(213.5 / 55), math.exp(209.5 / 55)
    assert diff.delta == pytest.approx(a - b)
    # the difference of the two changes a table shows, in % of the shared start
    assert diff.rel_pct == pytest.approx(100 * (a - start) / start - 100 * (b - start) / start)
    assert diff.resolved and diff.rel_ci[0] <= diff.rel_pct <= diff.rel_ci[1]
    with pytest.raises(ValueError, match="same fact draw"):
        difference_between_runs(before, first, Items.means([1.0, 2.0]))


def test_a_shift_both_runs_share_cancels_in_their_difference():
    # each item moves a lot, alike in both runs; the first run adds 0.05 on every item
    rng = np.random.default_rng(2)
    before = rng.normal(-5.0, 1.0, 300)
    shared = rng.normal(-0.2, 1.0, 300)
    second = before + shared
    first = second + 0.05 + rng.normal(0.0, 0.02, 300)
    items = [Items.means(list(x)) for x in (before, first, second)]
    own = [paired_change(items[0], items[i]) for i in (1, 2)]
    diff = difference_between_runs(*items)
    width = diff.delta_ci[1] - diff.delta_ci[0]
    assert all(width < (c.delta_ci[1] - c.delta_ci[0]) / 10 for c in own)
    assert not (own[0].delta_ci[0] > own[1].delta_ci[1])  # their own intervals overlap
    assert diff.resolved and diff.delta == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize("probe", ["wikitext", "retention", "triviaqa", "nq_open"])
def test_each_probe_reports_items_that_rebuild_its_metrics(probe, tokenizer, tiny_model,
                                                           data_dir):
    cfg = EvalConfig(probes=[probe], limit=6, limits={"wikitext": 2, "retention": 6},
                     document_words=120, max_length=256, max_gen_toks=4, progress=False,
                     data_dir=str(data_dir))
    rows = load_probe_rows(probe, cfg)
    if probe == "retention":  # a random model knows no word: keep every word start
        rows = [{**r, "positions": list(range(1, 12))} for r in rows]
    else:
        rows = select_probe_rows(probe, tiny_model, tokenizer, rows, cfg)
    result = score_probe_samples(probe, tiny_model, tokenizer, rows, cfg)
    assert result.items, f"{probe} reports no per-item totals"
    for metric, items in result.items.items():
        assert items.n == len(rows)
        assert items.value() == pytest.approx(result.metrics[metric], rel=1e-9, abs=1e-12)


def _items_file(run_dir, before: list[float], after: list[float]) -> None:
    """items.json of a run scoring three WikiText-like articles (totals of log-likelihood)."""
    import json

    def block(num):
        return {"wikitext": {"word_perplexity": {"num": num, "den": [10.0, 20.0, 30.0],
                                                 "link": "exp_neg"}}}

    run_dir.mkdir()
    (run_dir / "items.json").write_text(json.dumps(
        {"end_facts": "8", "heldout_probe": None,
         "points": {"end": {"before": block(before), "after": block(after)}}}))


def test_runs_whose_starts_differ_by_scoring_noise_compare_each_on_its_own_start(tmp_path):
    """The same base model scored on two machines differs in the last bf16 digits: the runs
    still pair item by item, each run's change taken from its own start; another draw's
    items (other totals) are not paired."""
    from smfexp.reporting.versus import compare_runs

    start = [-30.0, -50.0, -90.0]
    noisy = [-30.03, -50.0, -89.95]  # 0.1% on two articles
    _items_file(tmp_path / "a", start, [-30.6, -51.0, -91.8])
    _items_file(tmp_path / "b", noisy, [n - 0.3 for n in noisy])  # +0.3 nats on each
    _items_file(tmp_path / "other", [-20.0, -70.0, -60.0], [-20.0, -70.0, -60.0])
    (row,), skipped = compare_runs(tmp_path / "a", tmp_path / "b")
    assert skipped == []
    own = Items(tuple(noisy), (10.0, 20.0, 30.0), "exp_neg")
    moved = Items(tuple(n - 0.3 for n in noisy), (10.0, 20.0, 30.0), "exp_neg")
    assert row.second == pytest.approx(100 * (moved.value() - own.value()) / own.value())
    assert row.difference == pytest.approx(row.first - row.second)
    rows, skipped = compare_runs(tmp_path / "a", tmp_path / "other")
    assert rows == [] and skipped == ["wikitext/word_perplexity"]
