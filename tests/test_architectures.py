"""The architecture matrix (benchmarks/architectures.py): memories and every method on tiny
random decoders of each family, the one-line errors where a layout is unsupported, and
docs/architectures.md kept equal to what these checks find."""

from __future__ import annotations

import pytest
import torch

from benchmarks.architectures import DOC, FAMILIES, LLAMA_LIKE, MEMORY, run_family, table_rows
from smfexp.memory import attach_memory, detach_memory

# the families a user brings, at least: 8 dense decoders and one mixture of experts
assert len(FAMILIES) >= 9 and any("MoE" in f.name for f in FAMILIES)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family(family) -> None:
    row = run_family(family.name)
    failed = {col: out for col, out in row.items() if out.startswith("FAIL")}
    assert not failed, failed
    refused = {col for col, out in row.items() if out.startswith("no:")}
    assert refused == set(family.unsupported), row
    for col in refused:  # one line that says what is missing or why
        assert "\n" not in row[col] and family.model in row[col], row[col]


def test_doc_table_is_what_the_checks_find() -> None:
    text = DOC.read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table == table_rows(), "docs/architectures.md is stale: python -m " \
                                  "benchmarks.architectures"


def _llama4():
    """Llama 4 keeps its feed-forward at ``.feed_forward``, an MoE block on every 2nd layer
    that returns (flattened output, router logits)."""
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    torch.manual_seed(0)
    cfg = Llama4TextConfig(**{**LLAMA_LIKE, "intermediate_size_mlp": 128, "head_dim": 16,
                              "num_local_experts": 4, "num_experts_per_tok": 1,
                              "interleave_moe_layer_step": 2})
    return Llama4ForCausalLM(cfg).eval()


def test_feed_forward_blocks_and_tuple_returning_moe() -> None:
    model = _llama4()
    ids = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(ids).logits
        attach_memory(model, {**MEMORY, "gate_init": 0.0})
        assert torch.equal(model(ids).logits, base)
        for layer in model.model.layers:
            layer.feed_forward.gate.data.fill_(0.5)
        assert not torch.equal(model(ids).logits, base)
        detach_memory(model)
        assert torch.equal(model(ids).logits, base)
    with pytest.raises(ValueError, match="block 1 of Llama4ForCausalLM: Llama4TextMoe returns "
                                         "a tuple") as err:
        attach_memory(model, {**MEMORY, "mode": "replacement"})
    assert "\n" not in str(err.value)
    attach_memory(model, {**MEMORY, "layers": [0], "mode": "replacement"})  # the dense block


def test_lora_targets_that_match_nothing_are_one_line() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from smfexp.methods.lora import resolve_target_modules

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2))
    assert resolve_target_modules(model, ["q_proj", "down_proj"]) == ["c_attn", "c_proj"]
    with pytest.raises(ValueError, match=r"match no layer of GPT2LMHeadModel.*c_fc") as err:
        resolve_target_modules(model, ["wq", "wo"])
    assert "\n" not in str(err.value)
