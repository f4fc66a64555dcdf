"""Batched scoring primitives: continuation log-likelihood, rolling log-likelihood, greedy
generation.

Tokenisation and windowing follow lm-evaluation-harness 0.4.13 ``HFLM`` exactly (context /
continuation split, BOS-or-EOS prefix for rolling windows, left-padded generation batches
sorted longest first), so the ``harness`` protocol reproduces its numbers. What differs is
only how the work is done:

- requests are deduplicated by model input (four one-token MedMCQA choices share a pass),
  sorted longest first, batched by count *and* padded-token budget, and put back in order;
- the transformer body runs once per batch and the output head is applied only to the
  positions that are scored, in row chunks, so full-vocabulary logits never exist for more
  than one chunk (the harness materialises and log-softmaxes ``[batch, seq, vocab]``);
- generation stops each row as soon as its text contains a stop string (the harness keeps
  the whole batch going until one stop string has appeared in every row);
- one device-to-host transfer per log-likelihood batch (generation adds one small transfer
  per decoding step, to test stop strings, as ``transformers`` stopping criteria must).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from smfexp.eval.config import EvalConfig
from smfexp.eval.normalize import cut_at_stop

log = logging.getLogger(__name__)

TOKENIZER_INFINITY = 1000000000000000019884624838656  # lm_eval.models.utils
DEFAULT_MAX_LENGTH = 2048  # lm_eval HFLM._DEFAULT_MAX_LENGTH
HEAD_CHUNK_ELEMENTS = 1 << 25  # logits elements per head chunk (128 MiB in float32)


# --------------------------------------------------------------------------- model state
@contextlib.contextmanager
def scoring_mode(model: torch.nn.Module, precision: str = "fp32") -> Iterator[None]:
    """eval() + inference_mode (+ bf16 autocast); the caller's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    try:
        with torch.inference_mode(), autocast:
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def resolve_max_length(model: Any, tokenizer: Any, override: int | None = None) -> int:
    """The harness rule: config ``n_positions``/``max_position_embeddings``/``n_ctx``
    (nested ``text_config`` first), else the tokenizer's ``model_max_length``, else 2048."""
    if override:
        return int(override)
    config = getattr(model, "config", None)
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != TOKENIZER_INFINITY:
        return int(mml)
    return DEFAULT_MAX_LENGTH


# --------------------------------------------------------------------------- tokenising
@dataclass
class Encoder:
    """Strings -> token ids with HFLM's rules (``tok_encode`` / ``_encode_pair``)."""

    tokenizer: Any
    max_length: int

    @property
    def prefix_token_id(self) -> int:
        """BOS, or EOS when there is none: conditions the first token of a document."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def encode_many(
        self, strings: Sequence[str], add_special_tokens: bool | None = None
    ) -> list[list[int]]:
        """Batch ``tok_encode``: strings already starting with the prefix token's text get no
        extra special tokens; the rest use the tokenizer's default."""
        if not strings:
            return []
        out: list[list[int] | None] = [None] * len(strings)
        if add_special_tokens is None:
            bos_text = self.tokenizer.decode(self.prefix_token_id)
            groups: dict[bool | None, list[int]] = {}
            for i, s in enumerate(strings):
                key = False if bos_text and s.startswith(bos_text) else None
                groups.setdefault(key, []).append(i)
        else:
            groups = {add_special_tokens: list(range(len(strings)))}
        for flag, idx in groups.items():
            kwargs = {} if flag is None else {"add_special_tokens": flag}
            ids = self.tokenizer([strings[i] for i in idx], **kwargs)["input_ids"]
            for i, row in zip(idx, ids, strict=True):
                out[i] = list(row)
        return out  # type: ignore[return-value]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(context, continuation) -> token ids, split where the harness splits them.

        Trailing context spaces move to the continuation; the continuation's tokens are those
        of ``encode(context + continuation)`` beyond ``len(encode(context))``. An empty context
        is replaced by the prefix token.
        """
        strings: dict[str, int] = {}
        bare: dict[str, int] = {}
        plan: list[tuple[str, str] | tuple[None, str]] = []
        for context, continuation in pairs:
            if context == "":
                bare.setdefault(continuation, len(bare))
                plan.append((None, continuation))
                continue
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            strings.setdefault(context, len(strings))
            strings.setdefault(context + continuation, len(strings))
            plan.append((context, continuation))
        enc = self.encode_many(list(strings))
        bare_enc = self.encode_many(list(bare), add_special_tokens=False)
        out: list[tuple[list[int], list[int]]] = []
        for context, continuation in plan:
            if context is None:
                cont = bare_enc[bare[continuation]]
                prefix = self.prefix_token_id
                out.append(
                    ([prefix], cont) if not cont or prefix != cont[0] else (cont[:1], cont[1:])
                )
                continue
            ctx = enc[strings[context]]
            whole = enc[strings[context + continuation]]
            out.append((ctx, whole[len(ctx) :]))
        return out


def chat_prompt(tokenizer: Any, user: str, system: str | None = None) -> str:
    """Wrap a prompt as one user turn (after an optional system turn) + the assistant header,
    as the harness does with ``apply_chat_template=True``."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "eval.chat_template=true but the tokenizer has no chat template; "
            "use an instruct model or set eval.chat_template=false"
        )
    messages = [{"role": "user", "content": user}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja TemplateError: some templates reject a system turn
        if not system:
            raise
        return tokenizer.apply_chat_template(
            messages[1:], tokenize=False, add_generation_prompt=True
        )


# --------------------------------------------------------------------------- forward passes
@dataclass
class ScoringParts:
    """``body(ids) -> [B, T, X]`` and ``head([N, X]) -> [N, vocab]`` logits.

    ``split`` is True when X is the hidden size (head applied per chunk); otherwise body
    returns logits and head is the identity.
    """

    body: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]
    split: bool
    vocab_size: int = 0  # 0: the body already returns logits


def scoring_parts(model: Any) -> ScoringParts:
    """Split the LM into decoder body + output head when that provably equals its forward.

    The check compares both paths on a short input, so models whose logits are post-processed
    (soft-capping, scaling) or wrapped unusually fall back to the plain forward.
    """
    full = ScoringParts(
        body=lambda ids: model(input_ids=ids, use_cache=False).logits,
        head=lambda x: x,
        split=False,
    )
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    base = getattr(inner, "base_model", None)
    if head is None or base is None or base is inner:
        return full
    try:
        vocab = int(getattr(head, "out_features", 0) or head.weight.shape[0])
        parts = ScoringParts(
            body=lambda ids: base(input_ids=ids, use_cache=False).last_hidden_state,
            head=head,
            split=True,
            vocab_size=vocab,
        )
        ids = (torch.arange(1, 9, device=model_device(model)) % vocab).unsqueeze(0)
        want = full.body(ids).float()
        got = parts.head(parts.body(ids)).float()
    except Exception as err:  # unusual wrapper: use the plain forward
        log.debug("body/head split unavailable (%s); scoring with full logits", err)
        return full
    scale = 1.0 + float(want.abs().max())
    if got.shape == want.shape and torch.allclose(got, want, rtol=1e-3, atol=1e-4 * scale):
        return parts
    log.info("model logits are post-processed; scoring with full logits")
    return full


@dataclass(frozen=True)
class Loglik:
    """Summed log-likelihood of a continuation, its token count and harness ``is_greedy``."""

    logprob: float
    n_tokens: int
    is_greedy: bool

    @property
    def mean(self) -> float:
        return self.logprob / self.n_tokens


LONG_ROW = 512  # tokens: beyond this, attention makes padding expensive


def _batches(
    order: Sequence[int], lengths: Sequence[int], batch_size: int, max_tokens: int
) -> Iterator[list[int]]:
    """Consecutive groups of a longest-first order, bounded by count and padded tokens.

    Long rows (WikiText windows of up to 8192 tokens) only share a batch with rows at least
    3/4 as long: padding a 2000-token tail to 8192 costs ~16x its attention.
    """
    batch: list[int] = []
    for item in order:
        longest = lengths[batch[0]] if batch else 0
        if batch and (
            len(batch) >= batch_size
            or (len(batch) + 1) * longest > max_tokens
            or (longest > LONG_ROW and 4 * lengths[item] < 3 * longest)
        ):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def loglikelihood_tokens(
    model: Any,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
    cfg: EvalConfig,
    desc: str = "loglikelihood",
    parts: ScoringParts | None = None,
) -> list[Loglik]:
    """Log-likelihood of each continuation given its context (token ids), harness semantics:
    the model input is ``(context + continuation)[-(max_length + 1):][:-1]``."""
    if not requests:
        return []
    inputs: dict[tuple[int, ...], int] = {}
    span: list[int] = []  # scored positions per unique input (longest continuation)
    req_input: list[int] = []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation encodes to zero tokens")
        if len(cont) > max_length:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length {max_length}")
        inp = tuple((list(ctx) + list(cont))[-(max_length + 1) :][:-1])
        u = inputs.setdefault(inp, len(inputs))
        if u == len(span):
            span.append(0)
        span[u] = max(span[u], len(cont))
        req_input.append(u)
    uniq = list(inputs)
    users: list[list[int]] = [[] for _ in uniq]
    for r, u in enumerate(req_input):
        users[u].append(r)
    lengths = [len(x) for x in uniq]
    order = sorted(range(len(uniq)), key=lambda u: (-lengths[u], uniq[u]))
    results: list[Loglik | None] = [None] * len(requests)
    with scoring_mode(model, cfg.precision):
        parts = parts or scoring_parts(model)
        bar = tqdm(total=len(requests), desc=desc, disable=not cfg.progress, leave=False)
        for batch in _batches(order, lengths, cfg.batch_size, cfg.max_batch_tokens):
            _score_batch(model, parts, batch, uniq, lengths, span, users, requests, results)
            bar.update(sum(len(users[u]) for u in batch))
        bar.close()
    return results  # type: ignore[return-value]


def _score_batch(
    model: Any,
    parts: ScoringParts,
    batch: list[int],
    uniq: list[tuple[int, ...]],
    lengths: list[int],
    span: list[int],
    users: list[list[int]],
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    results: list[Loglik | None],
) -> None:
    """One forward pass over a right-padded batch of unique inputs; fills ``results``."""
    device = model_device(model)
    width = lengths[batch[0]]
    padded = [list(uniq[u]) + [0] * (width - lengths[u]) for u in batch]
    keep = torch.zeros(len(batch), width, dtype=torch.bool)
    rows: list[int] = []
    targets: list[int] = []
    segments: list[tuple[int, int, int]] = []  # (request, start in flat list, n tokens)
    offset = 0
    for i, u in enumerate(batch):
        keep[i, lengths[u] - span[u] : lengths[u]] = True
        for r in users[u]:
            cont = list(requests[r][1])
            first = offset + span[u] - len(cont)
            segments.append((r, len(rows), len(cont)))
            rows.extend(range(first, first + len(cont)))
            targets.extend(cont)
        offset += span[u]
    ids = torch.tensor(padded, dtype=torch.long, device=device)
    hidden = parts.body(ids)[keep.to(device)]  # [N, X] scored positions, row-major
    del ids
    lp, greedy = _score_rows(
        hidden,
        parts.head,
        parts.vocab_size or hidden.shape[-1],
        torch.tensor(rows, device=device),
        torch.tensor(targets, device=device),
    )
    del hidden
    packed = torch.stack([lp.double(), greedy.double()]).cpu().tolist()  # one transfer
    for r, start, n in segments:
        token_lps = packed[0][start : start + n]
        results[r] = Loglik(math.fsum(token_lps), n, all(packed[1][start : start + n]))


def _score_rows(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    vocab_size: int,
    rows: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target log-probs and greedy flags for (row, target) pairs, one logits chunk at a time.

    Every row of ``hidden`` is a scored position, so each chunk's logsumexp is fully used;
    rows shared by several requests (same input) are computed once.
    """
    token_lp = torch.empty(rows.shape[0], dtype=torch.float32, device=hidden.device)
    greedy = torch.empty(rows.shape[0], dtype=torch.bool, device=hidden.device)
    chunk = max(1, HEAD_CHUNK_ELEMENTS // max(1, vocab_size))
    for start in range(0, hidden.shape[0], chunk):
        # log_softmax (not logit - logsumexp): the harness' kernel, so values match bit for bit
        logp = torch.log_softmax(head(hidden[start : start + chunk]).float(), dim=-1)
        best = logp.argmax(dim=-1)
        sel = ((rows >= start) & (rows < start + logp.shape[0])).nonzero().squeeze(1)
        local = rows[sel] - start
        tgt = targets[sel]
        token_lp[sel] = logp[local, tgt]
        greedy[sel] = best[local] == tgt
        del logp, best
    return token_lp, greedy


def loglikelihood(
    model: Any,
    encoder: Encoder,
    pairs: Sequence[tuple[str, str]],
    cfg: EvalConfig,
    desc: str = "loglikelihood",
    parts: ScoringParts | None = None,
) -> list[Loglik]:
    """``HFLM.loglikelihood`` for (context, continuation) strings."""
    return loglikelihood_tokens(
        model, encoder.encode_pairs(pairs), encoder.max_length, cfg, desc=desc, parts=parts
    )


# --------------------------------------------------------------------------- rolling
def rolling_windows(
    tokens: Sequence[int], prefix_token: int, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """``get_rolling_token_windows(context_len=1)`` + ``make_disjoint_window``: every token is
    predicted once; the first window is conditioned on ``prefix_token``, later windows on as
    much preceding text as fits."""
    tokens = list(tokens)
    if not tokens:
        return []
    windows: list[tuple[list[int], list[int]]] = []
    first = min(max_length, len(tokens))
    windows.append(([prefix_token, *tokens[: first - 1]], tokens[:first]))
    predicted = first
    while predicted < len(tokens):
        n_pred = min(len(tokens) - predicted, max_length)
        end = predicted + n_pred
        windows.append((tokens[end - max_length - 1 : end - 1], tokens[end - n_pred : end]))
        predicted += n_pred
    return [(ctx[: len(ctx) - (len(cont) - 1)], cont) for ctx, cont in windows]


def rolling_loglikelihood(
    model: Any,
    encoder: Encoder,
    texts: Sequence[str],
    cfg: EvalConfig,
    desc: str = "rolling loglikelihood",
) -> list[Loglik]:
    """``HFLM.loglikelihood_rolling``: whole-document log-likelihood in disjoint windows."""
    requests: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    for i, ids in enumerate(encoder.encode_many(texts)):
        for window in rolling_windows(ids, encoder.prefix_token_id, encoder.max_length):
            requests.append(window)
            owner.append(i)
    scored = loglikelihood_tokens(model, requests, encoder.max_length, cfg, desc=desc)
    sums = [0.0] * len(texts)
    counts = [0] * len(texts)
    greedy = [True] * len(texts)
    for i, ll in zip(owner, scored, strict=True):
        sums[i] += ll.logprob
        counts[i] += ll.n_tokens
        greedy[i] = greedy[i] and ll.is_greedy
    return [Loglik(s, n, g) for s, n, g in zip(sums, counts, greedy, strict=True)]


def sliding_windows(
    tokens: Sequence[int], window: int, stride: int
) -> list[tuple[list[int], list[int]]]:
    """The Hugging Face perplexity recipe (``docs/perplexity``) as (context, target) pairs:
    windows of ``window`` tokens every ``stride``; each token after the first is scored once,
    with up to ``window - 1`` tokens of context."""
    tokens = list(tokens)
    out: list[tuple[list[int], list[int]]] = []
    prev_end = 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + window, len(tokens))
        first = max(prev_end, begin + 1)
        if first < end:
            out.append((tokens[begin:first], tokens[first:end]))
        prev_end = end
        if end == len(tokens):
            break
    return out


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
