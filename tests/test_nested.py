"""Nested streams and retention of earlier facts: the arithmetic and one real tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from smfexp.callbacks.nested import kept_share, quarter_bounds
from smfexp.data.sampling import evenly_spaced

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["memory.layers=[1,2]", "memory.n_keys=16", "memory.knn=4", "memory.k_dim=32",
        "memory.heads=2", "background.n=16", "background.max_length=32"]


def test_quarters_cover_the_stream_once_and_kept_is_end_over_right_after():
    assert quarter_bounds(10) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert quarter_bounds(1000)[3] == (750, 1000)
    assert kept_share(0.5, 0.45) == pytest.approx(0.9)
    assert kept_share(0.0, 0.2) is None  # nothing learned: no share to keep
    assert evenly_spaced(list(range(10)), 4) == [0, 2, 5, 7]
    assert evenly_spaced(list(range(3)), 4) == [0, 1, 2]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMFEXP_CACHE", str(tmp_path / "cache"))


def _tiny_stream_run(run_dir: Path, data_dir: str, *overrides: str) -> dict:
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "model=tiny", "method=smf", "selector=tfidf", "method.top_t=4",
            "data=triviaqa_facts", "data.n_facts=8", "data.phrasings_per_step=2",
            "data.steps_per_fact=1",
            "logger=csv", "callbacks.progress_bar=none", "trainer.precision=32-true",
            "eval.limit=4", "eval.probes=[triviaqa,retention]", "eval.limits.retention=2",
            "eval.max_gen_toks=4", "eval.progress=false", "eval.every_n_facts=4",
            "eval.stream_probes=[retention]", "eval.nested_at=[2,4,8]",
            "eval.earlier_facts=true", f"paths.data_dir={data_dir}", *TINY, *overrides])
    cfg.paths.output_dir = str(run_dir)
    return train(TrainConfig.from_hydra(cfg))


def test_one_run_scores_every_n_and_each_quarter(tmp_path, data_dir):
    results = _tiny_stream_run(tmp_path / "run", data_dir)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    nested = on_disk["nested"]
    assert sorted(nested, key=int) == ["2", "4", "8"]
    assert [nested[n]["step"] for n in ("2", "4", "8")] == [2, 4, 8]  # one step per fact
    for entry in nested.values():
        assert {"target", "triviaqa", "retention"} <= set(entry["after"])
        assert entry["before"]["triviaqa"] == results["before"]["triviaqa"]  # same rows
        assert entry["target_beyond_heldout"]["probe"] == "triviaqa"
        assert 0 < entry["memory"]["rows_touched_share"] <= 1
    assert nested["8"]["after"]["target"] == results["after"]["target"]  # the last N = the run
    fills = [nested[n]["memory"]["rows_touched_share"] for n in ("2", "4", "8")]
    assert fills == sorted(fills)  # rows written only accumulate
    assert all(nested[n]["memory"]["background_read_change"] > 0 for n in ("2", "4", "8"))
    quarters = on_disk["earlier_facts"]["quarters"]
    assert [q["facts"] for q in quarters] == [[0, 2], [2, 4], [4, 6], [6, 8]]
    assert quarters[3]["right_after"] == quarters[3]["end"]  # the last quarter ends the stream
    assert all(q["n"] == 2 for q in quarters)
    assert all("memory" in p for p in on_disk["stream"]["points"])


def test_two_runs_compare_item_by_item_at_every_n(tmp_path, data_dir):
    """A lever against the default on the same draw: items.json holds every N's per-item
    totals, and --versus gives each probe's difference of the changes results.json shows."""
    from smfexp.report import main as report_main
    from smfexp.reporting.versus import compare_runs

    default = _tiny_stream_run(tmp_path / "default", data_dir)
    lever = _tiny_stream_run(tmp_path / "lever", data_dir, "method.lr=30")
    document = json.loads((tmp_path / "lever" / "items.json").read_text())
    assert sorted(document["points"]) == ["2", "4", "end"] and document["end_facts"] == "8"
    rows, skipped = compare_runs(tmp_path / "lever", tmp_path / "default", facts=4)
    assert skipped == []
    by_name = {(r.probe, r.metric): r for r in rows}
    for probe in ("target", "triviaqa"):  # relative changes in %, as the tables show them
        row = by_name[(probe, "answer_logprob")]
        shown = [run["nested"]["4"]["rel_delta_pct"][probe]["answer_logprob"]
                 for run in (lever, default)]
        assert (row.first, row.second) == pytest.approx(shown, rel=1e-4, abs=1e-6)
        assert row.difference == pytest.approx(shown[0] - shown[1], rel=1e-4, abs=1e-6)
        assert row.interval[0] <= row.difference <= row.interval[1]
    assert row.unit == "%" and by_name[("target", "exact_match")].unit == "points"
    assert ("beyond held-out", "exact_match") in by_name
    at_end, _ = compare_runs(tmp_path / "lever", tmp_path / "default", facts=8)
    assert at_end == compare_runs(tmp_path / "lever", tmp_path / "default")[0]
    same, _ = compare_runs(tmp_path / "default", tmp_path / "default")
    assert all(r.difference == 0 and not r.resolved for r in same)
    assert report_main(["--versus", str(tmp_path / "lever"), str(tmp_path / "default"),
                        "--facts", "3"]) == 2  # no scores after 3 facts: a clear error
