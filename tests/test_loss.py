"""The training loss computes logits only where labels are scored, and equals HF's loss."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from smfexp.training import loss as loss_module
from smfexp.training.loss import causal_lm_loss, loss_bearing_mask, supports_chunked_loss


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    return LlamaForCausalLM(cfg)


def _sft_batch() -> dict[str, torch.Tensor]:
    """Two right-padded rows whose labels cover only an answer span (prompt and pad = -100)."""
    ids = torch.randint(1, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 6:10] = ids[0, 6:10]
    labels[1, 4:7] = ids[1, 4:7]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("wrap", ["plain", "lora", "full-lm"])
def test_loss_matches_the_models_own_loss_and_gradients(wrap: str, monkeypatch) -> None:
    """Also the tied embedding / lm_head gradient (full finetuning), over several chunks."""
    model = _model()
    batch = _sft_batch()
    if wrap == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    if wrap == "full-lm":  # every token scored, 3 positions per chunk: 4 chunks
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        monkeypatch.setattr(loss_module, "CHUNK_TOKENS", 3)
    assert supports_chunked_loss(model)
    ours = causal_lm_loss(model, batch)
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    theirs = model(**batch).loss
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_bf16_autocast_loss_is_close_to_the_models_own() -> None:
    model = _model()
    batch = _sft_batch()
    batch["labels"] = batch["input_ids"].clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = causal_lm_loss(model, batch)
        theirs = model(**batch).loss
    torch.testing.assert_close(ours, theirs.float(), rtol=2e-2, atol=2e-2)


def test_mask_marks_the_positions_that_predict_labels() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100]])
    assert loss_bearing_mask(labels).tolist() == [[False, True, True, False, False]]


@pytest.mark.parametrize("wrap", ["frozen", "lora"])
def test_bf16_copies_of_frozen_weights_change_nothing(wrap: str) -> None:
    """Under bf16 autocast the training loss reuses one cast of every frozen weight instead of
    casting it again on each use: the same loss and gradients, bit for bit."""
    model = _model()
    model.requires_grad_(False)
    if wrap == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        trained = [p for p in model.parameters() if p.requires_grad]
    else:
        trained = [model.model.layers[1].mlp.down_proj.weight]
        trained[0].requires_grad_(True)
    batch = _sft_batch()
    casts = loss_module.FrozenWeightCasts()
    results = []
    for use in (None, casts, casts):  # the second use of the copies is the cached one
        for p in trained:
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = causal_lm_loss(model, batch, use)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in trained]))
    decoder_copies, _ = casts.get(model.get_base_model().model if wrap == "lora" else model.model,
                                  model.get_output_embeddings())
    assert decoder_copies == {}  # autocast is off here: nothing to reuse
    with torch.autocast("cpu", dtype=torch.bfloat16):
        copies, head = casts.get(model.get_base_model().model if wrap == "lora"
                                 else model.model, model.get_output_embeddings())
    assert copies and head is not None and all(w.dtype == torch.bfloat16 for w in copies.values())
    assert not any(n.endswith("down_proj.weight") and "layers.1" in n for n in copies) \
        or wrap == "lora"  # a weight that trains is never replaced by a stale copy
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1], strict=True))
