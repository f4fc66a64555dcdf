"""The hparams_search objective on real results.json shapes: fact runs start at 0 on their
facts and carry a ``target_seen`` variant; the objective must stay finite on both."""

from __future__ import annotations

import math

import pytest

from smfexp.objective import forgetting_pct, learned_points, objective


def _fact_results(target_before: float, target_after: float) -> dict:
    before = {"target": {"exact_match": target_before},
              "target_seen": {"exact_match": target_before},
              "triviaqa": {"exact_match": 0.10, "answer_logprob": -2.0},
              "wikitext": {"word_perplexity": 20.0}}
    after = {"target": {"exact_match": target_after},
             "target_seen": {"exact_match": target_after + 0.1},
             "triviaqa": {"exact_match": 0.15, "answer_logprob": -2.2},
             "wikitext": {"word_perplexity": 21.0}}
    delta = {p: {m: after[p][m] - before[p][m] for m in after[p]} for p in after}
    rel = {p: {m: 100 * (after[p][m] - before[p][m]) / abs(before[p][m])
               for m in after[p] if before[p][m]} for p in after}
    return {"protocol": "harness", "target_probe": "triviaqa", "before": before,
            "after": after, "delta": delta, "rel_delta_pct": rel,
            "target_beyond_heldout": {"probe": "triviaqa",
                                      "delta": {"exact_match": delta["target"]["exact_match"]
                                                - delta["triviaqa"]["exact_match"]}}}


def test_new_facts_from_zero_give_a_finite_objective_in_points():
    results = _fact_results(0.0, 0.5)
    # learned 50 points, minus the 5 the held-out questions gained too (format)
    assert learned_points(results) == pytest.approx(45.0)
    # forgetting probes only (target_seen is a variant of the target, not a probe):
    # wikitext +5% perplexity; triviaqa exact match rose, its primary metric is not worse
    assert forgetting_pct(results) == pytest.approx((5.0 + 0.0) / 2)
    assert objective(results, forgetting_penalty=2.0) == pytest.approx(45.0 - 2 * 2.5)


def test_a_target_the_base_model_partly_knows_does_not_crash_on_variants():
    results = _fact_results(0.003, 0.4)  # the design-card run: base answers 0.3% of facts
    assert math.isfinite(objective(results))


def test_without_a_heldout_probe_learning_is_the_plain_change_in_points():
    results = _fact_results(0.25, 0.5)
    results["target_beyond_heldout"] = None
    assert learned_points(results) == pytest.approx(25.0)
    results["after"].pop("target")
    results["delta"].pop("target")
    assert math.isnan(objective(results))
