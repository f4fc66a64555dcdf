"""Whole-document log-likelihood in windows, built on :mod:`smfexp.eval.loglik`.

- harness (``HFLM.loglikelihood_rolling``): disjoint ``max_length`` windows in which every
  token is predicted once, the first conditioned on the BOS token (EOS when there is none),
  later windows on as much preceding text as fits;
- paper: the Hugging Face perplexity recipe, overlapping windows every ``stride`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smfexp.eval.config import EvalConfig
from smfexp.eval.encode import Encoder
from smfexp.eval.loglik import Loglik, loglikelihood_tokens


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
    """``HFLM.loglikelihood_rolling``: whole-document log-likelihood in disjoint windows
    (like the harness, without ``is_greedy``: None)."""
    requests: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    for i, ids in enumerate(encoder.encode_many(texts)):
        for window in rolling_windows(ids, encoder.prefix_token_id, encoder.max_length):
            requests.append(window)
            owner.append(i)
    scored = loglikelihood_tokens(model, requests, encoder.max_length, cfg, desc=desc,
                                  greedy=False)
    sums = [0.0] * len(texts)
    counts = [0] * len(texts)
    for i, ll in zip(owner, scored, strict=True):
        sums[i] += ll.logprob
        counts[i] += ll.n_tokens
    return [Loglik(s, n, None) for s, n in zip(sums, counts, strict=True)]


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
