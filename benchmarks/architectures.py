"""Architecture matrix: the memory retrofit and every method on tiny random decoders of each
family (real ``transformers`` classes, 2 blocks, hidden 64, vocab 256; seconds each on CPU).

Per family: attach memories (additive: gate 0 and an empty memory give the base model's
logits bit for bit; replacement), one SMF step in each mode (only the selected rows move) whose
saved memory reloads onto a fresh copy of the model exactly, one LoRA step (target layers
resolved for the family) and one full-finetuning step. A layout the retrofit does not support is
a one-line error, recorded as such.

``python -m benchmarks.architectures`` rewrites docs/architectures.md from these checks;
tests/test_architectures.py runs the same checks and fails when that table is stale.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

DOC = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
COMMAND = "python -m benchmarks.architectures"
VOCAB = 256
IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
LLAMA_LIKE = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, **IDS}
MEMORY = {"layers": [0, 1], "n_keys": 8, "heads": 2, "knn": 4, "k_dim": 16}
EMPTY = {"value_init": "zero", "gate_init": 1.0, "gate_trainable": False}
COLUMNS = ("exact", "additive", "replacement", "lora", "full")
OK = "yes"


@dataclass(frozen=True)
class Family:
    """One decoder family: its tiny config, and the columns expected to be a clear error."""

    name: str
    config: str  # transformers config class
    model: str  # transformers causal-LM class
    kwargs: dict[str, Any] = field(default_factory=dict)
    unsupported: frozenset[str] = frozenset()


FAMILIES = (
    Family("Llama", "LlamaConfig", "LlamaForCausalLM", LLAMA_LIKE),
    Family("Qwen2", "Qwen2Config", "Qwen2ForCausalLM", LLAMA_LIKE),
    Family("Qwen3", "Qwen3Config", "Qwen3ForCausalLM", {**LLAMA_LIKE, "head_dim": 16}),
    Family("Mistral", "MistralConfig", "MistralForCausalLM", LLAMA_LIKE),
    Family("Gemma 2", "Gemma2Config", "Gemma2ForCausalLM", {**LLAMA_LIKE, "head_dim": 16}),
    Family("Gemma 3", "Gemma3TextConfig", "Gemma3ForCausalLM", {**LLAMA_LIKE, "head_dim": 16}),
    Family("Phi-3", "Phi3Config", "Phi3ForCausalLM", LLAMA_LIKE),
    Family("OLMo 2", "Olmo2Config", "Olmo2ForCausalLM", LLAMA_LIKE),
    Family("GPT-2", "GPT2Config", "GPT2LMHeadModel",
           {"vocab_size": VOCAB, "n_embd": 64, "n_inner": 128, "n_layer": 2, "n_head": 4,
            "n_positions": 64, **IDS}),
    Family("GPT-NeoX", "GPTNeoXConfig", "GPTNeoXForCausalLM",
           {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
            **IDS}),
    Family("Falcon", "FalconConfig", "FalconForCausalLM",
           {"vocab_size": VOCAB, "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, **IDS}),
    Family("Bloom", "BloomConfig", "BloomForCausalLM",
           {"vocab_size": VOCAB, "hidden_size": 64, "n_layer": 2, "n_head": 4, **IDS},
           unsupported=frozenset({"replacement"})),
    Family("Mixtral (MoE)", "MixtralConfig", "MixtralForCausalLM",
           {**LLAMA_LIKE, "num_local_experts": 4, "num_experts_per_tok": 2}),
    Family("Qwen2-MoE (MoE)", "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
           {**LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 64}),
    Family("OLMoE (MoE)", "OlmoeConfig", "OlmoeForCausalLM",
           {**LLAMA_LIKE, "num_experts": 4, "num_experts_per_tok": 2}),
    Family("OPT", "OPTConfig", "OPTForCausalLM",
           {"vocab_size": VOCAB, "hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "word_embed_proj_dim": 64, "max_position_embeddings": 64,
            **IDS},
           unsupported=frozenset({"exact", "additive", "replacement"})),
)
BY_NAME = {f.name: f for f in FAMILIES}


# --------------------------------------------------------------------------- building
def build(family: Family, seed: int = 0) -> nn.Module:
    """The family's tiny randomly initialised causal LM (same seed: same weights), eval mode."""
    import transformers

    torch.manual_seed(seed)
    config = getattr(transformers, family.config)(**family.kwargs)
    return getattr(transformers, family.model)(config).eval()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Two random 12-token rows (the second right-padded), the answer half labelled."""
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    ids[1, 10:] = IDS["pad_token_id"]
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :6] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    b = batch()
    return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


@torch.no_grad()
def loss(model: nn.Module) -> float:
    model.eval()
    return float(model(**batch()).loss)


def fit_one_step(module: Any) -> None:
    """One optimizer step through a real Lightning Trainer (the methods' own training_step)."""
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, train_dataloaders=DataLoader([batch()], batch_size=None))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def moved(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


# --------------------------------------------------------------------------- the checks
def check_exact(family: Family) -> str:
    """Additive memories at gate 0, and empty ones, leave the logits bit-identical."""
    from smfexp.memory import attach_memory, detach_memory, memories_are_silent

    model = build(family)
    base = logits(model)
    attach_memory(model, {**MEMORY, "gate_init": 0.0})
    assert torch.equal(logits(model), base), "gate 0 changed the logits"
    detach_memory(model)
    assert torch.equal(logits(model), base), "detaching did not restore the base model"
    attach_memory(model, {**MEMORY, **EMPTY})
    assert memories_are_silent(model) and torch.equal(logits(model), base), \
        "an empty memory changed the logits"
    return OK


def check_smf(family: Family, memory: dict[str, Any]) -> str:
    """One SMF step moves only selected value rows; the saved memory reloads exactly."""
    from smfexp.memory import attach_memory, load_memory, memory_modules
    from smfexp.methods.smf import SparseMemoryFinetune

    model = build(family)
    attach_memory(model, memory)
    module = SparseMemoryFinetune(model, None, selector="tf", top_t=8, lr=1.0,
                                  warmup_steps=0, schedule="constant")
    before, start_loss = snapshot(model), loss(model)
    fit_one_step(module)
    changed = moved(model, before)
    assert changed and all(n.endswith("memory.values") for n in changed), sorted(changed)[:3]
    for mem, touched in zip(module.memories, module.touched, strict=True):
        name = next(n for n, p in model.named_parameters() if p is mem.values)
        rows = (mem.values != before[name]).any(dim=1)
        assert not (rows & ~touched).any(), "a row outside the selection moved"
    assert loss(model) < start_loss, "the SMF step did not lower the loss"
    if hasattr(model.config, "output_router_logits"):  # MoE: the load-balancing loss still runs
        aux = model(**batch(), output_router_logits=True).aux_loss
        assert aux is not None and torch.isfinite(aux), "no finite router (aux) loss"
    with tempfile.TemporaryDirectory() as tmp:
        saved = module.save_trained(Path(tmp))
        fresh = build(family)
        load_memory(fresh, saved)
    for a, b in zip(memory_modules(model), memory_modules(fresh), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                      b.state_dict().values(), strict=True))
    assert torch.equal(logits(fresh), logits(model)), "the reloaded memory scores differently"
    return OK


def check_lora(family: Family) -> str:
    """One LoRA step (conf/method/lora.yaml's targets, as the family names them)."""
    from smfexp.methods.lora import LoRAFinetune

    module = LoRAFinetune(build(family), None, lr=1e-2, dropout=0.0, rank=4, alpha=8,
                          warmup_steps=0, schedule="constant")
    before, start_loss = snapshot(module.model), loss(module.model)
    fit_one_step(module)
    changed = moved(module.model, before)
    assert changed and all("lora_B" in n for n in changed), sorted(changed)[:3]
    assert loss(module.model) < start_loss, "the LoRA step did not lower the loss"
    return ", ".join(sorted(module.lora_config.target_modules))


def check_full(family: Family) -> str:
    """One full-finetuning step lowers the loss."""
    from smfexp.methods.full import FullFinetune

    module = FullFinetune(build(family), None, lr=1e-3, warmup_steps=0, schedule="constant")
    start_loss = loss(module.model)
    fit_one_step(module)
    assert loss(module.model) < start_loss, "the full step did not lower the loss"
    return OK


CHECKS: dict[str, Callable[[Family], str]] = {
    "exact": check_exact,
    "additive": lambda f: check_smf(f, {**MEMORY, **EMPTY}),
    # one of the two blocks, as conf/memory's fractions never replace them all (an MoE
    # model keeps a router for its load-balancing loss)
    "replacement": lambda f: check_smf(f, {**MEMORY, "layers": [1], "mode": "replacement"}),
    "lora": check_lora,
    "full": check_full,
}


def outcome(check: Callable[[Family], str], family: Family) -> str:
    """``yes`` (or what it found), ``no: <the one-line error>`` for a ValueError the code
    raises on purpose, ``FAIL: ...`` for anything else (a bug)."""
    try:
        return check(family)
    except ValueError as err:
        return f"no: {err}"
    except Exception as err:  # recorded (on one line): the test fails on it
        return f"FAIL: {type(err).__name__}: {' '.join(str(err).split())}"


# --------------------------------------------------------------------------- notes
def _moe_note(mlp: nn.Module, config: Any) -> str:
    n = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", "?")
    shared = " + a shared expert" if hasattr(mlp, "shared_expert") else ""
    fused = not any(isinstance(m, nn.Linear) for m in mlp.experts.modules())
    return (f"sparse MoE ({n} experts{shared}): the memory wraps the whole block, router "
            f"included (replacement: that router leaves the load-balancing loss)"
            + ("; routed experts are fused weights, so LoRA adapts attention"
               + (" and the shared expert" if shared else "") + " only" if fused else ""))


def notes(family: Family) -> str:
    """What about the family's layout the retrofit had to handle (read off the model)."""
    from smfexp.memory.attach import decoder_blocks, mlp_attr
    from smfexp.training.loss import supports_chunked_loss

    model = build(family)
    config = model.config
    blocks = decoder_blocks(model)
    attrs = [mlp_attr(b) for b in blocks]
    out = []
    if all(attrs):
        mlps = [getattr(b, a) for b, a in zip(blocks, attrs, strict=True)]
        kinds = ", ".join(dict.fromkeys(type(m).__name__ for m in mlps))
        out.append(f"`.{attrs[0]}` = {kinds}")
        moe = next((m for m in mlps if getattr(m, "experts", None) is not None), None)
        if moe is not None:
            out.append(_moe_note(moe, config))
    else:
        out.append("the feed-forward's layers sit in the block itself, not in one module")
    if getattr(config, "parallel_attn", False) or getattr(config, "use_parallel_residual", False):
        out.append("attention and MLP in parallel")
    if not supports_chunked_loss(model):
        why = [k for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
               if getattr(config, k, None)] or ["lm_head bias"]
        out.append(f"loss: the model's own ({', '.join(why)}), not the chunked one")
    return "; ".join(out)


@cache
def run_family(name: str) -> dict[str, str]:
    """Every column's outcome for one family (cached: the test and the doc share a run)."""
    family = BY_NAME[name]
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = {col: outcome(check, family) for col, check in CHECKS.items()}
        row["notes"] = notes(family)
    return row


# --------------------------------------------------------------------------- the doc
HEADER = ("| Family | Model class | Gate 0 / empty memory = base logits | Additive: SMF step + "
          "reload | Replacement: SMF step + reload | LoRA step (targets) | Full step | Notes |")


def table_rows() -> list[str]:
    """The Markdown table, one line per family (runs any family not yet run)."""
    lines = [HEADER, "|" + "---|" * 8]
    for family in FAMILIES:
        row = run_family(family.name)
        outcomes = [row[c] for c in COLUMNS]
        outcomes = [o if i == 0 or o != outcomes[i - 1] or not o.startswith("no:")
                    else "no (the same)" for i, o in enumerate(outcomes)]
        cells = [family.name, f"`{family.model}`", *outcomes, row["notes"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def render() -> str:
    import transformers

    return "\n".join([
        "# Decoder architectures",
        "",
        "Which decoder families the memory retrofit (`smfexp.memory.attach_memory`) and the",
        "three methods run on. Each row is a tiny randomly initialised model of the real",
        "`transformers` class (2 blocks, hidden 64, vocab 256), additive memories on both",
        "blocks, a replacement memory on the second:",
        "",
        "- **Gate 0 / empty memory**: additive memories with gate 0, and empty ones (zero values,",
        "  `memory=empty`), give exactly the base model's logits (bit for bit), and detaching",
        "  restores it.",
        "- **Additive / Replacement**: one SMF step (`selector=tf`, top 8 rows per layer; additive",
        "  on an empty memory as `memory=empty` sets it up, replacement on random values) changes",
        "  only selected value rows and lowers the loss (MoE: the load-balancing loss still runs);",
        "  the saved memory loads onto a fresh copy of the model with identical parameters and",
        "  logits.",
        "- **LoRA**: one step with `conf/method/lora.yaml`'s targets as the family names them",
        "  (`smfexp.methods.lora.TARGET_ALIASES`); only adapter weights move and the loss drops.",
        "- **Full**: one full-finetuning step lowers the loss.",
        "",
        "`yes`: works; `no: ...`: refused on purpose with that one-line error. Memories are found",
        "at the block's `.mlp` / `.feed_forward` / `.block_sparse_moe` / `.ffn`",
        "(`smfexp.memory.attach.MLP_ATTRS`).",
        "",
        f"Generated by `{COMMAND}` (transformers {transformers.__version__}); do not edit by",
        "hand. `tests/test_architectures.py` runs the same checks in the fast suite and fails",
        "when this table is out of date.",
        "",
        *table_rows(),
        "",
    ])


def main() -> int:
    text = render()
    DOC.write_text(text)
    print(f"wrote {DOC}")
    failed = [line for line in table_rows()[2:] if "FAIL:" in line]
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
