"""Section 4: log-likelihood and greedy-generation tokens/s of the project's scorer
(``smfexp.eval``) on a randomly initialised SmolLM2-shaped model, bf16."""

from __future__ import annotations

import dataclasses
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from mdtable import fnum, table

from .device import free_device_memory, random_model, timed
from .markdown import fint
from .plan import T_GENERATED_TOKENS_S, T_LOGLIK_TOKENS_S, Budget, Plan
from .sections import Check, Section, skipped


class RowCounter:
    """Forward hook: rows of every forward call = tokens a greedy decode step produces."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.rows += int(ids.shape[0]) if ids is not None else 0


def eval_model(plan: Plan, tok: Any) -> Any:
    """The SmolLM2-shaped random model; EOS can never win the argmax (its row is zero), so
    greedy rows never stop early."""
    shape = dataclasses.replace(plan.eval_shape, vocab=len(tok))
    model = random_model(
        shape,
        plan.device,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.no_grad():
        model.get_input_embeddings().weight[tok.eos_token_id].zero_()  # tied: the head's row too
    return model.eval()


def random_ids(
    n: int, length: int, vocab: int, exclude: Sequence[int], seed: int
) -> list[list[int]]:
    """``n`` rows of random token ids (no special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[list(exclude)] = False
    pool = allowed.nonzero().squeeze(1)
    picks = torch.randint(0, pool.numel(), (n, length), generator=gen)
    return pool[picks].tolist()


def loglik_throughput(plan: Plan, model: Any, tok: Any) -> dict[str, Any]:
    """Scored tokens/s of ``loglikelihood_tokens``: each request scores all of its tokens."""
    from smfexp.eval import EvalConfig
    from smfexp.eval.encode import Encoder, resolve_max_length
    from smfexp.eval.loglik import loglikelihood_tokens

    enc = Encoder(tok, resolve_max_length(model, tok))
    cfg = EvalConfig(
        batch_size=plan.ll_batch,
        precision="bf16",
        progress=False,
        max_batch_tokens=max(16384, plan.ll_batch * plan.ll_tokens),
    )
    conts = random_ids(plan.ll_requests, plan.ll_tokens, len(tok), tok.all_special_ids, 1)
    requests = [([enc.prefix_token_id], c) for c in conts]
    loglikelihood_tokens(model, requests[: plan.ll_batch], enc.max_length, cfg)  # warm-up
    walls, tokens = [], 0
    for _ in range(plan.eval_runs):
        wall, out = timed(
            plan.device, lambda: loglikelihood_tokens(model, requests, enc.max_length, cfg)
        )
        walls.append(wall)
        tokens = sum(r.n_tokens for r in out)
    median = statistics.median(walls)
    return {"tokens": tokens, "median_s": median, "tokens_s": tokens / median}


def generation_throughput(plan: Plan, model: Any, tok: Any) -> dict[str, Any]:
    """Generated tokens/s of batched greedy ``generate_until`` (no stop strings)."""
    from smfexp.eval import EvalConfig
    from smfexp.eval.encode import Encoder, resolve_max_length
    from smfexp.eval.generate import generate_until

    enc = Encoder(tok, resolve_max_length(model, tok))
    cfg = EvalConfig(batch_size=plan.gen_batch, precision="bf16", progress=False)
    ids = random_ids(plan.gen_prompts, plan.gen_prompt_tokens, len(tok), tok.all_special_ids, 2)
    prompts = [tok.decode(row) for row in ids]
    counter = RowCounter()
    handle = model.register_forward_hook(counter, with_kwargs=True)
    try:
        generate_until(model, enc, prompts[: plan.gen_batch], (), 4, cfg)  # warm-up
        walls, tokens = [], []
        for _ in range(plan.eval_runs):
            counter.rows = 0
            wall, _ = timed(
                plan.device, lambda: generate_until(model, enc, prompts, (), plan.gen_tokens, cfg)
            )
            walls.append(wall)
            tokens.append(counter.rows)
    finally:
        handle.remove()
    median = statistics.median(walls)
    return {
        "tokens": tokens[-1],
        "expected": plan.gen_prompts * plan.gen_tokens,
        "median_s": median,
        "tokens_s": statistics.median(tokens) / median,
    }


def eval_section(plan: Plan, budget: Budget) -> Section:
    """Log-likelihood and generation throughput of the project's scorer."""
    from smfexp.models.loading import ModelSpec, load_tokenizer

    if reason := budget.short(plan.case_need_s):
        return skipped("eval", reason)
    tok = load_tokenizer(ModelSpec(name="tiny", source="tiny"))  # the embedded SmolLM2 tokenizer
    free_device_memory(plan.device)
    model = eval_model(plan, tok)
    with warnings.catch_warnings():  # transformers' deprecation notes, once per call
        warnings.simplefilter("ignore")
        ll = loglik_throughput(plan, model, tok)
        gen = generation_throughput(plan, model, tok)
    del model
    free_device_memory(plan.device)
    section = Section("eval")
    section.lines += [
        f"Random {plan.eval_shape.label}-shaped model (float32 weights) with the embedded "
        f'SmolLM2 tokenizer, `EvalConfig(precision="bf16")` (autocast), median of '
        f"{plan.eval_runs} runs after a warm-up.",
        "",
        f"- log-likelihood: `smfexp.eval.loglik.loglikelihood_tokens`, {plan.ll_requests} "
        f"requests of {plan.ll_tokens} random tokens after the prefix token (every token "
        f"scored), batch {plan.ll_batch}.",
        f"- generation: `smfexp.eval.generate.generate_until`, {plan.gen_prompts} prompts of "
        f"{plan.gen_prompt_tokens} random tokens (decoded), `until=()`, max_gen_toks "
        f"{plan.gen_tokens}, batch {plan.gen_batch}; EOS's embedding row is zeroed so no row "
        f"stops early. Tokens are counted by a forward hook (rows per decoding call).",
        "",
    ]
    section.lines += table(
        ["measurement", "tokens per run", "median wall (s)", "tokens/s"],
        [
            [
                "log-likelihood (scored tokens)",
                fint(ll["tokens"]),
                fnum(ll["median_s"]),
                fint(ll["tokens_s"]),
            ],
            [
                f"greedy generation (generated tokens; expected {gen['expected']:,})",
                fint(gen["tokens"]),
                fnum(gen["median_s"]),
                fint(gen["tokens_s"]),
            ],
        ],
        "---|---:|---:|---:|",
    )
    section.checks = [
        Check(
            f"log-likelihood tokens/s ({plan.eval_shape.label} shape, bf16)",
            fint(ll["tokens_s"]),
            f">= {T_LOGLIK_TOKENS_S:,}",
            ll["tokens_s"] >= T_LOGLIK_TOKENS_S,
        ),
        Check(
            f"generated tokens/s ({plan.eval_shape.label} shape, bf16)",
            fint(gen["tokens_s"]),
            f">= {T_GENERATED_TOKENS_S:,}",
            gen["tokens_s"] >= T_GENERATED_TOKENS_S,
        ),
    ]
    return section
