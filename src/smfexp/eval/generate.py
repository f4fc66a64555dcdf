"""Batched greedy generation (``HFLM.generate_until`` with ``do_sample=False``): left-padded
batches sorted longest first, as the harness builds them, with the same text.

What differs is only how the work is done: generation stops each row as soon as its text
contains a stop string (the harness keeps the whole batch going until one stop string has
appeared in every row), and rows still going after a short first pass are regrouped into full
batches. Generation adds one small device-to-host transfer per decoding step, to test stop
strings, as ``transformers`` stopping criteria must.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from smfexp.eval.config import EvalConfig
from smfexp.eval.encode import Encoder, model_device, scoring_mode
from smfexp.eval.normalize import cut_at_stop


# --------------------------------------------------------------------------- generation
class _StopCheck:
    """Is a row finished? EOS (any of the model's EOS ids) or a stop string in its text.

    Only the last few tokens are decoded, covering each stop's token length + 2, as the
    harness' ``MultiTokenEOSCriteria`` does; a stop the tail misses only costs extra steps,
    because the final text is cut at the first stop anyway.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.eos_ids = eos_ids
        self.lookback = 2 + max(
            [len(tokenizer.encode(s, add_special_tokens=False)) for s in stops] or [0]
        )

    def __call__(self, tokens: list[int]) -> bool:
        if tokens[-1] in self.eos_ids:
            return True
        if not self.stops:
            return False
        tail = self.tokenizer.decode(tokens[-self.lookback :], skip_special_tokens=True)
        return any(s in tail for s in self.stops)


FIRST_PASS_TOKENS = 32  # most answers stop within this; the rest continue in a second pass


def generate_until(
    model: Any,
    encoder: Encoder,
    prompts: Sequence[str],
    until: Sequence[str],
    max_gen_toks: int,
    cfg: EvalConfig,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuation of each prompt, cut at the first stop string (``HFLM.generate_until``
    with ``do_sample=False``; EOS always stops).

    Two passes: every row gets up to :data:`FIRST_PASS_TOKENS` tokens in length-sorted
    batches; the few rows still going (no stop string yet) are regrouped into full batches
    and continue from their tokens so far. Greedy decoding is a function of the prefix, so the
    text is the same, but a rambling row no longer holds a whole batch for 256 steps.
    """
    if not prompts:
        return []
    tok = encoder.tokenizer
    eos = tok.decode(tok.eos_token_id, skip_special_tokens=False)
    stops = list(until) + ([eos] if eos is not None and eos not in until else [])
    special = set(getattr(tok, "all_special_tokens", []))
    visible = [s for s in stops if s and s not in special]  # specials never survive decoding
    max_ctx = encoder.max_length - max_gen_toks
    if max_ctx <= 0:
        raise ValueError(f"max_gen_toks={max_gen_toks} leaves no context in {encoder.max_length}")
    bos = getattr(tok, "bos_token", None)
    contexts = [
        ids[-max_ctx:]
        for ids in tok(
            list(prompts),
            truncation=False,
            add_special_tokens=not (bos and prompts[0].startswith(bos)),
        )["input_ids"]
    ]
    order = sorted(range(len(prompts)), key=lambda i: (-len(contexts[i]), prompts[i]))
    generated: list[list[int]] = [[] for _ in prompts]
    is_done = _StopCheck(tok, visible, _eos_ids(model, tok))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    bar = tqdm(total=len(prompts), desc=desc, disable=not cfg.progress, leave=False)
    with scoring_mode(model, cfg.precision):
        pending = order
        for budget in sorted({min(FIRST_PASS_TOKENS, max_gen_toks), max_gen_toks}):
            still_going = []
            for start in range(0, len(pending), cfg.batch_size):
                batch = pending[start : start + cfg.batch_size]
                finished = _decode_batch(
                    model,
                    [contexts[i] + generated[i] for i in batch],
                    [generated[i] for i in batch],
                    budget,
                    is_done,
                    pad_id,
                )
                still_going += [i for i, done in zip(batch, finished, strict=True) if not done]
                bar.update(sum(finished))
            pending = still_going
        bar.update(len(pending))  # out of budget
    bar.close()
    return [cut_at_stop(tok.decode(g, skip_special_tokens=True), stops) for g in generated]


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for value in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        tok.eos_token_id,
    ):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _decode_batch(
    model: Any,
    contexts: list[list[int]],
    generated: list[list[int]],
    budget: int,
    is_done: _StopCheck,
    pad_id: int,
) -> list[bool]:
    """Greedy decoding of one left-padded batch until each row is done or has ``budget``
    tokens; appends to ``generated`` in place and says which rows are done.

    Same tokens as ``model.generate(do_sample=False)`` (positions from the attention mask, a
    KV cache), but a finished row leaves the batch: its cache rows are dropped.
    """
    device = model_device(model)
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in contexts], device=device)
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    done = [False] * len(contexts)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    cache = out.past_key_values
    next_tokens = out.logits[:, -1].argmax(-1)
    last_pos = positions[:, -1]
    alive = list(range(len(contexts)))
    while True:
        for row, token in zip(alive, next_tokens.tolist(), strict=True):  # one transfer
            generated[row].append(token)
            done[row] = is_done(generated[row])
        keep = [i for i, row in enumerate(alive) if not done[row]]
        if not keep or len(generated[alive[keep[0]]]) >= budget:
            return done
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_tokens, last_pos = mask[index], next_tokens[index], last_pos[index]
            alive = [alive[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=next_tokens[:, None],
            attention_mask=mask,
            position_ids=last_pos[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        next_tokens = out.logits[:, -1].argmax(-1)
