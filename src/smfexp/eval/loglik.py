"""Batched continuation log-likelihood (``HFLM.loglikelihood`` semantics; the model input is
``(context + continuation)[-(max_length + 1):][:-1]``).

The numbers are the harness's; what differs is only how the work is done:

- requests are deduplicated by model input (four one-token MedMCQA choices share a pass),
  sorted longest first, batched by count *and* padded-token budget, and put back in order;
- the transformer body runs once per batch and the output head is applied only to the
  positions that are scored, in row chunks, so full-vocabulary logits never exist for more
  than one chunk (the harness materialises and log-softmaxes ``[batch, seq, vocab]``);
- one device-to-host transfer per log-likelihood batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from smfexp.eval.config import EvalConfig
from smfexp.eval.encode import Encoder, model_device, scoring_mode

log = logging.getLogger(__name__)

HEAD_CHUNK_ELEMENTS = 1 << 25  # logits elements per head chunk (128 MiB in float32)


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
    (soft-capping, scaling) or wrapped unusually fall back to the plain forward. A model that
    provides its own parts (:class:`smfexp.eval.prefix.FrozenPrefixModel`) is asked for them.
    """
    own = getattr(model, "scoring_parts", None)
    if callable(own):
        return own()
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
    """Summed log-likelihood of a continuation, its token count and harness ``is_greedy``
    (None where the caller did not ask for it: perplexity never reads it)."""

    logprob: float
    n_tokens: int
    is_greedy: bool | None

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
    greedy: bool = True,
) -> list[Loglik]:
    """Log-likelihood of each continuation given its context (token ids), harness semantics:
    the model input is ``(context + continuation)[-(max_length + 1):][:-1]``. ``greedy=False``
    skips the argmax over the vocabulary behind ``is_greedy`` (None then): ~6% of a
    perplexity pass."""
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
            _score_batch(model, parts, batch, uniq, lengths, span, users, requests, results,
                         greedy)
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
    greedy: bool = True,
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
    lp, best = _score_rows(
        hidden,
        parts.head,
        parts.vocab_size or hidden.shape[-1],
        torch.tensor(rows, device=device),
        torch.tensor(targets, device=device),
        greedy,
    )
    del hidden
    packed = torch.stack([lp.double(), best.double()]).cpu().tolist()  # one transfer
    for r, start, n in segments:
        token_lps = packed[0][start : start + n]
        is_greedy = all(packed[1][start : start + n]) if greedy else None
        results[r] = Loglik(math.fsum(token_lps), n, is_greedy)


def _score_rows(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    vocab_size: int,
    rows: torch.Tensor,
    targets: torch.Tensor,
    want_greedy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target log-probs and greedy flags (all False unless ``want_greedy``) for (row, target)
    pairs, one logits chunk at a time.

    Every row of ``hidden`` is a scored position, so each chunk's logsumexp is fully used;
    rows shared by several requests (same input) are computed once.
    """
    token_lp = torch.empty(rows.shape[0], dtype=torch.float32, device=hidden.device)
    greedy = torch.zeros(rows.shape[0], dtype=torch.bool, device=hidden.device)
    chunk = max(1, HEAD_CHUNK_ELEMENTS // max(1, vocab_size))
    for start in range(0, hidden.shape[0], chunk):
        # log_softmax (not logit - logsumexp): the harness' kernel, so values match bit for bit
        logp = torch.log_softmax(head(hidden[start : start + chunk]).float(), dim=-1)
        sel = ((rows >= start) & (rows < start + logp.shape[0])).nonzero().squeeze(1)
        local = rows[sel] - start
        tgt = targets[sel]
        token_lp[sel] = logp[local, tgt]
        if want_greedy:
            greedy[sel] = logp.argmax(dim=-1)[local] == tgt
        del logp
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
