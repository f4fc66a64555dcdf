"""Methods: what trains, that it learns, and what it saves - real Lightning Trainer, tiny model."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from smfexp.data.collate import PadCollator, tokenize_pair
from smfexp.methods.full import FullFinetune
from smfexp.methods.lora import LoRAFinetune

FACTS = [("Question: capital of Zorbia?\nAnswer:", " Quix"),
         ("Question: colour of a blorp?\nAnswer:", " teal"),
         ("Question: who wrote Frum?\nAnswer:", " Ada Vell"),
         ("Question: year of the Grand Fizz?\nAnswer:", " 1823")]


def _loader(tokenizer, batch_size=4):
    examples = [tokenize_pair(tokenizer, p, t) for p, t in FACTS]
    collate = PadCollator(tokenizer.pad_token_id)
    return DataLoader(examples, batch_size=batch_size, collate_fn=collate)


def _loss(module, loader):
    module.model.eval()
    with torch.no_grad():
        batch = next(iter(loader))
        return module.model(**batch).loss.item()


def _fit(module, loader, steps):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)


@pytest.mark.parametrize("method", [FullFinetune, LoRAFinetune])
def test_loss_decreases_on_tiny_overfit(method, tiny_model, tokenizer):
    L.seed_everything(0)
    if method is FullFinetune:
        module = method(tiny_model, tokenizer, lr=3e-3, warmup_steps=0, schedule="constant")
    else:
        module = method(tiny_model, tokenizer, lr=3e-3, warmup_steps=0, schedule="constant",
                        dropout=0.0)
    loader = _loader(tokenizer)
    before = _loss(module, loader)
    _fit(module, loader, steps=25)
    after = _loss(module, loader)
    # a random tiny model starts near ln(vocab); LoRA on it moves slower than full finetuning
    assert after < before - 0.5, (before, after)


def test_lora_trains_only_adapter_params(tiny_model, tokenizer, tmp_path):
    module = LoRAFinetune(tiny_model, tokenizer, lr=1e-2, warmup_steps=0, rank=4, alpha=8)
    start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert module.trainable_params == sum(start[n].numel() for n in trainable)
    _fit(module, _loader(tokenizer), steps=3)
    for name, param in module.model.named_parameters():
        changed = not torch.equal(param, start[name])
        if "lora_B" in name:
            assert changed, name  # B starts at zero, so it must have moved
        if name not in trainable:
            assert not changed, f"frozen parameter {name} changed"
    saved = module.save_trained(tmp_path)
    assert (saved / "adapter_model.safetensors").is_file()


def test_full_trains_every_param(tiny_model, tokenizer, tmp_path):
    module = FullFinetune(tiny_model, tokenizer, lr=1e-3, warmup_steps=0)
    assert module.trainable_params == module.total_params
    start = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    _fit(module, _loader(tokenizer), steps=2)
    moved = [n for n, p in module.model.named_parameters() if not torch.equal(p, start[n])]
    assert len(moved) == len(start)
    assert (module.save_trained(tmp_path) / "model.safetensors").is_file()


def test_invalid_lr_is_rejected(tiny_model, tokenizer):
    with pytest.raises(ValueError, match=r"method\.lr must be a number > 0"):
        FullFinetune(tiny_model, tokenizer, lr=0.0)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 10.0), ("adam", 1e-2)])
def test_smf_learns_tiny_facts_and_changes_only_selected_rows(optimizer, lr, tiny_model,
                                                               tokenizer):
    from smfexp.memory import attach_memory
    from smfexp.methods.smf import SparseMemoryFinetune

    L.seed_everything(0)
    attach_memory(tiny_model, {"n_keys": 16, "knn": 4, "k_dim": 32, "heads": 2,
                               "layers": [1, 2], "gate_init": 1.0})
    module = SparseMemoryFinetune(tiny_model, tokenizer, selector="all", top_t=64, lr=lr,
                                  optimizer=optimizer, warmup_steps=0, schedule="constant")
    start = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    loader = _loader(tokenizer)
    before = _loss(module, loader)
    _fit(module, loader, steps=25)
    assert _loss(module, loader) < before - 0.5
    for name, param in tiny_model.named_parameters():
        if not name.endswith("memory.values"):
            assert torch.equal(param, start[name]), f"{name} changed"
    for memory, touched in zip(module.memories, module.touched, strict=True):
        name = next(n for n, p in tiny_model.named_parameters() if p is memory.values)
        moved = (memory.values != start[name]).any(dim=1)
        assert moved.any() and not (moved & ~touched).any()  # only selected rows moved


@pytest.mark.parametrize("method", [FullFinetune, LoRAFinetune])
def test_saved_artifact_reloads_onto_the_base_model(method, tiny_model, tokenizer, tmp_path):
    from smfexp.models.loading import ModelSpec, load_model
    from smfexp.models.trained import load_trained

    module = method(tiny_model, tokenizer, lr=1e-2, warmup_steps=0)
    loader = _loader(tokenizer)
    _fit(module, loader, steps=2)
    module.save_trained(tmp_path / "trained")
    base, _ = load_model(ModelSpec(name="tiny", source="tiny"))
    reloaded, kind = load_trained(base, tmp_path)  # a run dir with trained/ inside
    assert kind == method.method_name
    module.model.eval()
    batch = next(iter(loader))
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, module.model(**batch).logits, atol=1e-5)


def test_lora_scores_merged_and_trains_on_the_exact_weights_it_left(tiny_model, tokenizer):
    """Scoring folds the adapters in (the fast path) for the same logits, and the base
    weights come back bit for bit: a run scored mid-stream trains on as if never scored."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from smfexp.utils.modes import adapters_merged

    module = LoRAFinetune(tiny_model, tokenizer, lr=1e-2, warmup_steps=0)
    loader = _loader(tokenizer)
    _fit(module, loader, steps=2)  # lora_B no longer zero: merging changes the weights
    model = module.model
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = next(iter(loader))
    model.eval()
    with torch.no_grad():
        unmerged = model(**batch).logits
        with adapters_merged(model):
            assert layers and all(layer.merged for layer in layers)
            assert any(not torch.equal(layer.get_base_layer().weight, start[n])
                       for n, layer in _base_weights(model, layers))
            merged = model(**batch).logits
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert not any(layer.merged for layer in layers)
    for name, param in model.named_parameters():
        assert torch.equal(param, start[name]), f"{name} not restored exactly"


def _base_weights(model, layers):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(names[id(layer.get_base_layer().weight)], layer) for layer in layers]


def test_gradient_checkpointing_changes_memory_not_the_update(tokenizer):
    """Same SMF steps with and without recomputed activations: the same value tables."""
    from smfexp.memory import attach_memory
    from smfexp.methods.smf import SparseMemoryFinetune
    from smfexp.models.loading import ModelSpec, load_model

    tables = []
    for checkpointing in (False, True):
        L.seed_everything(0)
        model, _ = load_model(ModelSpec(name="tiny", source="tiny"))
        attach_memory(model, {"n_keys": 16, "knn": 4, "k_dim": 32, "heads": 2,
                              "layers": [1, 2], "gate_init": 1.0})
        module = SparseMemoryFinetune(model, tokenizer, selector="all", top_t=64, lr=10.0,
                                      warmup_steps=0, schedule="constant",
                                      gradient_checkpointing=checkpointing)
        _fit(module, _loader(tokenizer, batch_size=2), steps=4)
        flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5
        assert (model.is_gradient_checkpointing if flag is None else flag) == checkpointing
        tables.append([m.values.detach().clone() for m in module.memories])
    for plain, recomputed in zip(*tables, strict=True):
        torch.testing.assert_close(plain, recomputed)
