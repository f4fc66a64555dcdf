"""Fact learning: the target's gain beyond the held-out questions (format vs facts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from smfexp.callbacks.forgetting import ForgettingCallback
from smfexp.data.facts import FactsDataModule
from smfexp.data.modules import TargetSpec
from smfexp.eval import EvalConfig
from smfexp.reporting import write_report
from smfexp.tasks import triviaqa


def _scored(callback: ForgettingCallback, target_em: tuple[float, float],
            heldout_em: tuple[float, float]) -> ForgettingCallback:
    """Scores as a run would leave them (before/after per probe)."""
    for stage, i in (("before", 0), ("after", 1)):
        setattr(callback, stage, {
            "target": {"exact_match": target_em[i], "answer_logprob": -6.0 + 2 * i, "n": 4.0},
            "triviaqa": {"exact_match": heldout_em[i], "answer_logprob": -6.5 + 1.5 * i,
                         "n": 4.0},
            "wikitext": {"word_perplexity": 32.0 + i},
        })
    return callback


def test_facts_datamodule_names_its_heldout_probe(tokenizer, data_dir, tmp_path):
    def target(**kwargs) -> TargetSpec:
        dm = FactsDataModule(tokenizer, data_dir=str(data_dir), n_facts=4, **kwargs)
        dm.setup()
        return dm.target

    assert target().heldout_probe == "triviaqa"
    assert target(source="nq_open").heldout_probe == "nq_open"
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n"
                           for i in range(8)), encoding="utf-8")
    # a user's file holds out some of its own questions, scored as the facts are
    assert target(source="file", path=str(own), heldout_size=4).heldout_probe == "heldout"
    assert target(source="file", path=str(own), heldout_size=0).heldout_probe is None


def test_gain_beyond_heldout_is_target_minus_probe(data_dir):
    rows = triviaqa.load_rows(data_dir).rows
    cfg = EvalConfig(probes=["triviaqa", "wikitext"], limit=4, progress=False)
    callback = _scored(ForgettingCallback(cfg, TargetSpec("triviaqa", rows[2000:2004],
                                                          heldout_probe="triviaqa"), None),
                       target_em=(0.0, 0.5), heldout_em=(0.0, 0.25))
    callback.probe_rows = {"triviaqa": rows[:4]}
    beyond = callback.target_beyond_heldout()
    assert beyond["probe"] == "triviaqa"
    assert beyond["delta"] == pytest.approx({"exact_match": 0.25, "answer_logprob": 0.5})

    no_heldout = _scored(ForgettingCallback(cfg, TargetSpec("triviaqa", rows[2000:2004]), None),
                         target_em=(0.0, 0.5), heldout_em=(0.0, 0.25))
    assert no_heldout.target_beyond_heldout() is None


def test_overlapping_probe_rows_report_nothing(data_dir, caplog):
    rows = triviaqa.load_rows(data_dir).rows
    cfg = EvalConfig(probes=["triviaqa"], limit=4, progress=False)
    callback = _scored(ForgettingCallback(cfg, TargetSpec("triviaqa", rows[2:6],
                                                          heldout_probe="triviaqa"), None),
                       target_em=(0.0, 0.5), heldout_em=(0.0, 0.25))
    callback.probe_rows = {"triviaqa": rows[:4]}  # rows 2 and 3 are also trained facts
    with caplog.at_level(logging.WARNING):
        assert callback.target_beyond_heldout() is None
    assert "shares questions with the target" in caplog.text


def _facts_run(run_dir: Path, seed: int, beyond_em: float | None) -> None:
    before = {"target": {"exact_match": 0.0}, "triviaqa": {"exact_match": 0.0}}
    after = {"target": {"exact_match": 0.1}, "triviaqa": {"exact_match": 0.1 - (beyond_em or 0)}}
    delta = {p: {"exact_match": after[p]["exact_match"]} for p in after}
    results = {
        "status": "ok", "method": "smf", "selector": "kl", "seed": seed,
        "model": "smollm2-135m", "protocol": "harness", "precision": "32-true",
        "data": {"name": "triviaqa_facts"}, "target_probe": "triviaqa",
        "target_metric": "exact_match", "target_higher_is_better": True,
        "before": before, "after": after, "delta": delta,
        "target_beyond_heldout": None if beyond_em is None else
        {"probe": "triviaqa", "delta": {"exact_match": beyond_em}},
    }
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))


def test_report_shows_gain_beyond_heldout(tmp_path):
    _facts_run(tmp_path / "runs" / "0", 0, 0.02)
    _facts_run(tmp_path / "runs" / "1", 1, 0.04)
    summary = (write_report(tmp_path / "runs").files["summary.md"]).read_text()
    assert "### Target change beyond the held-out questions" in summary
    section = summary.split("### Target change beyond the held-out questions")[1]
    row = next(x for x in section.splitlines() if x.startswith("| smf | kl"))
    assert row.endswith("| 2 | +0.03 ± 0.13 (n=2) |")  # 95% t-interval: 12.71 * sd / sqrt(2)

    _facts_run(tmp_path / "plain" / "0", 0, None)  # older results.json: no such key
    plain = (write_report(tmp_path / "plain").files["summary.md"]).read_text()
    assert "beyond the held-out" not in plain


def test_facts_run_writes_gain_beyond_heldout(tmp_path, data_dir, monkeypatch):
    """A real (tiny-model) fact-learning run: results.json, CSV log and report agree."""
    from hydra import compose, initialize_config_dir

    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    monkeypatch.setenv("SMFEXP_CACHE", str(tmp_path / "cache"))
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "model=tiny", "method=full", "data=triviaqa_facts", "data.n_facts=4",
            "logger=csv", "callbacks.progress_bar=none", "trainer.max_steps=1",
            "trainer.precision=32-true", "eval.limit=4", "eval.probes=[triviaqa]",
            "eval.progress=false", f"paths.data_dir={data_dir}"])
    cfg.paths.output_dir = str(tmp_path / "run")
    results = train(TrainConfig.from_hydra(cfg))
    beyond = results["target_beyond_heldout"]
    assert beyond["probe"] == "triviaqa"
    for metric in ("exact_match", "answer_logprob"):
        expected = results["delta"]["target"][metric] - results["delta"]["triviaqa"][metric]
        assert beyond["delta"][metric] == pytest.approx(expected)
    logged = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text()
    assert "beyond_heldout/target/answer_logprob" in logged
    summary = write_report(tmp_path / "run", tmp_path / "report").files["summary.md"]
    assert "beyond the held-out questions" in summary.read_text()
