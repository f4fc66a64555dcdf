"""Product-key memory: exact top-k, surgery equivalence, sparse gradients, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smfexp.memory import (
    MemoryBlock,
    MemoryConfig,
    ProductKeyMemory,
    attach_memory,
    detach_memory,
    freeze_backbone,
    load_memory,
    memory_layer_indices,
    memory_modules,
    memory_parameters,
    save_memory,
    set_sparse_values,
)

SMALL = {"n_keys": 16, "heads": 2, "knn": 4, "k_dim": 16, "layers": [1, 3]}


def tiny_llama(seed: int = 0, hidden: int = 64, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    )
    return LlamaForCausalLM(cfg).eval()


def ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 1000, (batch, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- config
def test_fractions_map_to_expected_blocks() -> None:
    cfg = MemoryConfig()
    assert cfg.resolve_layers(30) == [7, 15, 22]
    assert cfg.resolve_layers(24) == [6, 12, 18]
    assert MemoryConfig(layers=[3, 0.5]).resolve_layers(4) == [2, 3]
    assert MemoryConfig(layers=[0, 0.5]).resolve_layers(4) == [0, 2]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"knn": 32, "n_keys": 16}, "knn"),
        ({"layers": [4]}, "out of range"),
        ({"layers": [1.5]}, "fractions"),
        ({"layers": [2, 0.5]}, "duplicate"),
        ({"n_keys": 0}, "n_keys"),
        ({"k_dim": 15}, "even"),
        ({"mode": "bogus"}, "additive, replacement"),
        ({"gate_init": 0.0, "gate_trainable": False}, "no gradient"),
        ({"query_norm": "bn"}, "none, layer, batch"),
    ],
)
def test_validation_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        MemoryConfig.from_config({**SMALL, **overrides}).validate(4)
    assert "\n" not in str(err.value)


def test_a_memory_the_host_cannot_hold_is_a_clear_error_not_a_kill() -> None:
    """2 x 32768\u00b2 x 64 fp32 = 512 GB: refused before any table is allocated, with the
    smaller setting to use; the model is left as it was."""
    model = tiny_llama()
    with pytest.raises(ValueError, match=r"memory.n_keys=32768: 2 value tables .* "
                                         r"GB of memory is available: use memory.n_keys=512"):
        attach_memory(model, {**SMALL, "n_keys": 32768})
    assert memory_modules(model) == []
    assert len(attach_memory(model, SMALL)) == 2  # the same call with a table that fits


def test_from_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="n_key"):
        MemoryConfig.from_config({"n_key": 3})


def test_boolean_query_norm_of_older_checkpoints_still_loads() -> None:
    assert MemoryConfig.from_config({"query_norm": True}).query_norm == "layer"
    assert MemoryConfig.from_config({"query_norm": False}).query_norm == "none"


# --------------------------------------------------------------------------- the layer
def _anisotropic_tokens(n: int = 512, hidden: int = 64) -> torch.Tensor:
    """Hidden states that share one large direction, as a pretrained LM's do."""
    g = torch.Generator().manual_seed(0)
    return 8 * torch.randn(hidden, generator=g) + torch.randn(n, hidden, generator=g)


def test_batch_query_norm_spreads_reads_over_the_slots() -> None:
    """Without it nearly every token reads the same few slots (the shared direction wins)."""
    used = {}
    for norm in ("none", "layer", "batch"):
        torch.manual_seed(0)
        mem = ProductKeyMemory(64, n_keys=16, heads=2, knn=4, k_dim=16, query_norm=norm)
        mem.train()(_anisotropic_tokens())
        used[norm] = mem.last_indices.unique().numel()
    assert used["batch"] > 3 * max(used["none"], used["layer"]), used


def test_frozen_queries_read_through_running_statistics() -> None:
    """Batch statistics only while the query path trains (retrofit); with it frozen (SMF) a
    token's slots do not depend on its batch and the statistics stay put."""
    torch.manual_seed(0)
    mem = ProductKeyMemory(64, n_keys=16, heads=2, knn=4, k_dim=16, query_norm="batch").train()
    x = _anisotropic_tokens()
    mem(x)
    bn = mem.query_norm
    assert int(bn.num_batches_tracked) == 1 and bn.running_mean.abs().sum() > 0
    mem.query_proj.weight.requires_grad_(False)
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    alone = mem(x[:3])
    alone_idx = mem.last_indices
    together = mem(x)[:3]
    assert torch.equal(alone_idx, mem.last_indices[:3])
    torch.testing.assert_close(alone, together)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])


def test_output_shapes_and_last_indices() -> None:
    torch.manual_seed(0)
    mem = ProductKeyMemory(64, n_keys=16, heads=2, knn=4, k_dim=16)
    x = torch.randn(3, 5, 64)
    y = mem(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert mem.last_indices.shape == (3, 5, 2 * 4) and mem.last_indices.dtype == torch.long
    assert mem.last_weights.shape == (3, 5, 2 * 4)
    assert not mem.last_indices.requires_grad and not mem.last_weights.requires_grad
    assert int(mem.last_indices.min()) >= 0 and int(mem.last_indices.max()) < 16 * 16
    per_head = mem.last_weights.view(3, 5, 2, 4).sum(-1)
    torch.testing.assert_close(per_head, torch.ones_like(per_head))
    assert mem.values.shape == (256, 64) and mem.values.dtype == torch.float32


@pytest.mark.parametrize(("n_keys", "knn"), [(16, 5), (16, 16), (8, 1), (16, 7), (12, 12)])
def test_topk_equals_brute_force_over_all_slots(n_keys: int, knn: int) -> None:
    torch.manual_seed(n_keys * 100 + knn)
    heads, k_dim = 3, 16
    mem = ProductKeyMemory(32, n_keys=n_keys, heads=heads, knn=knn, k_dim=k_dim).double()
    x = torch.randn(4, 7, 32, dtype=torch.float64)
    scores, slots = mem.lookup(x)  # [4, 7, heads, knn]
    q = mem.query_proj(x).view(4, 7, heads, 2, k_dim // 2)
    s1 = torch.einsum("bthd,hkd->bthk", q[..., 0, :], mem.keys[:, 0])
    s2 = torch.einsum("bthd,hkd->bthk", q[..., 1, :], mem.keys[:, 1])
    full = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # slot = i1 * n_keys + i2
    exact_scores, exact_slots = full.topk(knn, dim=-1)
    torch.testing.assert_close(scores, exact_scores)
    assert torch.equal(slots.sort(-1).values, exact_slots.sort(-1).values)
    # The reported score of every slot is that slot's true score.
    torch.testing.assert_close(full.gather(-1, slots), scores)


def test_bf16_autocast_keeps_fp32_params() -> None:
    torch.manual_seed(0)
    mem = ProductKeyMemory(64, n_keys=16, heads=2, knn=4, k_dim=16)
    x = torch.randn(2, 3, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mem(x)
    assert y.shape == x.shape and torch.isfinite(y.float()).all()
    assert mem.values.dtype == torch.float32 and mem.keys.dtype == torch.float32
    y.float().sum().backward()
    assert mem.values.grad is not None and mem.values.grad.dtype == torch.float32
    mem.zero_grad(set_to_none=True)
    mem.sparse_grad = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mem(x).float().sum().backward()
    assert mem.values.grad.is_sparse and mem.values.grad.dtype == torch.float32


# --------------------------------------------------------------------------- surgery
def test_additive_gate_zero_is_bit_identical() -> None:
    model = tiny_llama()
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        blocks = attach_memory(model, {**SMALL, "gate_init": 0.0})
        assert all(isinstance(b, MemoryBlock) for b in blocks)
        assert memory_layer_indices(model) == [1, 3]
        with_mem = model(x).logits
    assert (with_mem - base).abs().max().item() == 0.0
    # Non-zero gate changes the output; detaching restores the base exactly.
    with torch.no_grad():
        for b in blocks:
            b.gate.fill_(0.5)
        assert (model(x).logits - base).abs().max().item() > 0
        detach_memory(model)
        assert memory_modules(model) == []
        assert torch.equal(model(x).logits, base)


def test_attach_finds_blocks_of_other_decoders() -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        attach_memory(model, {**SMALL, "gate_init": 0.0, "layers": [0.5]})
        assert memory_layer_indices(model) == [2]
        assert torch.equal(model(x).logits, base)


def test_replacement_changes_outputs() -> None:
    model = tiny_llama()
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        blocks = attach_memory(model, {**SMALL, "mode": "replacement"})
        assert all(b.gate is None for b in blocks)
        out = model(x).logits
    assert out.shape == base.shape
    assert (out - base).abs().max().item() > 1e-3


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="mlp"):
        attach_memory(torch.nn.Sequential(torch.nn.Linear(2, 2)), SMALL)


def test_freeze_backbone_and_memory_parameters() -> None:
    model = tiny_llama()
    attach_memory(model, SMALL)
    n = freeze_backbone(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == n
    assert {id(p) for p in trainable} == {id(p) for p in memory_parameters(model)}
    values = memory_parameters(model, values_only=True)
    assert [v.shape for v in values] == [(256, 64), (256, 64)]


@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_reaches_only_read_rows(sparse: bool) -> None:
    model = tiny_llama()
    attach_memory(model, SMALL)
    freeze_backbone(model)
    set_sparse_values(model, sparse)
    x = ids(2, 10)
    model(x, labels=x).loss.backward()
    for mem in memory_modules(model):
        read = torch.zeros(mem.n_slots, dtype=torch.bool)
        read[mem.last_indices.flatten()] = True
        grad = mem.values.grad
        if sparse:
            assert grad.is_sparse
            rows = grad.coalesce().indices()[0]
            assert read[rows].all()
            dense = grad.to_dense()
        else:
            assert not grad.is_sparse
            dense = grad
        assert dense[~read].abs().max().item() == 0.0
        assert dense[read].abs().sum(-1).gt(0).any()


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_bit_identical(tmp_path) -> None:
    model = tiny_llama()
    attach_memory(model, {**SMALL, "layers": [0.25, 0.75]})
    with torch.no_grad():
        for p in memory_parameters(model):
            p.add_(torch.randn_like(p))
    save_memory(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "memory_config.json").read_text())
    assert meta["hidden_size"] == 64 and meta["layer_indices"] == [1, 3]

    fresh = tiny_llama()  # same backbone seed, memories not attached yet
    load_memory(fresh, tmp_path / "ckpt")
    src = dict(model.named_parameters())
    dst = dict(fresh.named_parameters())
    assert src.keys() == dst.keys()
    for name, p in src.items():
        assert torch.equal(p, dst[name]), name
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, fresh(x).logits)

    other = tiny_llama(seed=3)  # already attached with the same config: loads in place
    attach_memory(other, {**SMALL, "layers": [1, 3]})
    load_memory(other, tmp_path / "ckpt")
    assert torch.equal(memory_modules(other)[0].values, memory_modules(model)[0].values)


@pytest.mark.parametrize(
    ("model_kwargs", "cfg_overrides", "field"),
    [
        ({}, {"n_keys": 8}, "n_keys"),
        ({}, {"mode": "replacement"}, "mode"),
        ({"hidden": 32}, None, "hidden_size"),
    ],
)
def test_checkpoint_mismatch_is_a_clear_error(tmp_path, model_kwargs, cfg_overrides, field):
    model = tiny_llama()
    attach_memory(model, SMALL)
    save_memory(model, tmp_path)
    other = tiny_llama(**model_kwargs)
    if cfg_overrides is not None:
        attach_memory(other, {**SMALL, **cfg_overrides})
    with pytest.raises(ValueError, match=field):
        load_memory(other, tmp_path)
