"""Retention: the words the model predicted right before training, in text it never trains on.

Forgetting needs something to lose. The embedded model answers almost no closed-book
question (TriviaQA exact match ~0.3%), so QA scores of held-out questions cannot fall and
their answer log-prob rises with the answer format for every method. What it does know is
language: here, word-initial tokens of WikiText-2 test paragraphs (disjoint from the
background corpus and from the documents the wikitext probe scores) that the model, before
training, predicts greedily with probability >= 0.5. ``accuracy`` = the share it still
predicts greedily, ``logprob`` = their mean log-probability. Before training accuracy is 1
by construction. ``limit`` counts paragraphs.

Rows (:func:`load_rows`): ``{text}``, the paragraphs (lines of at least :data:`MIN_WORDS`
words, no headings) of WikiText-2 test documents :data:`FIRST_DOC` onwards, in order;
:func:`select` adds ``positions`` (the token positions the model knows) before training.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from smfexp.data.sources import Rows
from smfexp.eval.base import Probe, ProbeResult, data_dir, mean, take
from smfexp.eval.config import EvalConfig
from smfexp.eval.encode import model_device, scoring_mode
from smfexp.eval.loglik import HEAD_CHUNK_ELEMENTS, scoring_parts
from smfexp.eval.paired import Items
from smfexp.tasks import wikitext

FIRST_DOC = 40       # paragraphs of documents 40..61 (the wikitext probe scores the first 2-10;
                     # only eval=full, all 62, overlaps them)
MIN_WORDS = 40       # paragraphs, not headings or captions
MAX_TOKENS = 192     # tokens per paragraph scored (its beginning)
MIN_PROB = 0.5       # "knows it": greedy and at least this probable before training

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- rows
def load_rows(data_dir: Path | None) -> Rows:
    """The paragraphs of WikiText-2 test documents ``FIRST_DOC..`` -> rows {text}, in order."""
    docs = wikitext.load_rows(data_dir)
    paragraphs = [
        {"text": line.strip()}
        for row in docs.rows[FIRST_DOC:]
        for line in row["page"].splitlines()
        if len(line.split()) >= MIN_WORDS and not line.strip().startswith("=")
    ]
    return Rows(paragraphs, docs.source, 0, {"first_doc": FIRST_DOC})


# --------------------------------------------------------------------------- probe
def load(cfg: EvalConfig) -> Rows:
    return take(load_rows(data_dir(cfg)), cfg, "retention")


def _inputs(tokenizer: Any, rows: list[dict[str, Any]]) -> list[list[int]]:
    """Token ids per paragraph, conditioned on BOS (EOS if there is none)."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
        else tokenizer.eos_token_id
    encoded = tokenizer([r["text"] for r in rows], add_special_tokens=False)["input_ids"]
    return [[prefix, *ids[: MAX_TOKENS - 1]] for ids in encoded]


def _predictions(model: Any, inputs: list[list[int]], positions: list[list[int]],
                 cfg: EvalConfig) -> list[tuple[list[int], list[float]]]:
    """(greedy token, log-prob of the true next token) at ``positions`` of every input."""
    out: list[tuple[list[int], list[float]]] = [([], []) for _ in inputs]
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    device = model_device(model)
    with scoring_mode(model, cfg.precision):
        parts = scoring_parts(model)
        for start in range(0, len(order), cfg.batch_size):
            batch = [i for i in order[start : start + cfg.batch_size] if positions[i]]
            if not batch:
                continue
            width = len(inputs[batch[0]])
            ids = torch.tensor([inputs[i] + [0] * (width - len(inputs[i])) for i in batch],
                               device=device)  # right padding: causal, scored positions unaffected
            hidden = parts.body(ids)
            rows = torch.cat([hidden[j, positions[i]] for j, i in enumerate(batch)])
            targets = torch.tensor([inputs[i][p + 1] for i in batch for p in positions[i]],
                                   device=device)
            chunk = max(1, HEAD_CHUNK_ELEMENTS // max(1, parts.vocab_size or hidden.shape[-1]))
            greedy, logprob = [], []
            for c in range(0, rows.shape[0], chunk):
                logp = torch.log_softmax(parts.head(rows[c : c + chunk]).float(), dim=-1)
                greedy.append(logp.argmax(-1))
                logprob.append(logp.gather(1, targets[c : c + chunk, None]).squeeze(1))
            flat = torch.stack([torch.cat(greedy).double(), torch.cat(logprob).double()]).cpu()
            offset = 0
            for i in batch:
                n = len(positions[i])
                out[i] = ([int(t) for t in flat[0, offset : offset + n]],
                          flat[1, offset : offset + n].tolist())
                offset += n
    return out


def select(model: Any, tokenizer: Any, rows: list[dict[str, Any]],
           cfg: EvalConfig) -> list[dict[str, Any]]:
    """Keep, per paragraph, the word-initial positions the model now predicts right with
    p >= MIN_PROB; paragraphs with none are dropped. Run once, on the model before training."""
    inputs = _inputs(tokenizer, rows)
    starts = [[t for t in range(len(ids) - 1) if _word_start(tokenizer, ids[t + 1])]
              for ids in inputs]
    preds = _predictions(model, inputs, starts, cfg)
    kept = []
    for row, ids, cand, (greedy, logprob) in zip(rows, inputs, starts, preds, strict=True):
        known = [p for p, g, lp in zip(cand, greedy, logprob, strict=True)
                 if g == ids[p + 1] and lp >= _LOG_MIN_PROB]
        if known:
            kept.append({**row, "positions": known})
    if not kept:
        log.warning("retention: the model predicts none of the %d paragraphs' words with "
                    "p >= %.1f; its scores are NaN", len(rows), MIN_PROB)
    return kept


def score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig) -> ProbeResult:
    if not rows:  # the model knew none of the words (a random model): nothing to retain
        nan = float("nan")
        return ProbeResult({"accuracy": nan, "logprob": nan, "n": 0.0, "n_words": 0.0}, [])
    if any("positions" not in r for r in rows):
        raise ValueError("retention rows must be selected on the model before training first "
                         "(smfexp.tasks.retention.select)")
    inputs = _inputs(tokenizer, rows)
    positions = [list(r["positions"]) for r in rows]
    preds = _predictions(model, inputs, positions, cfg)
    hits, lps, samples = [], [], []
    hit_sums, lp_sums = [], []  # per paragraph: a paired interval resamples paragraphs
    for ids, pos, (greedy, logprob) in zip(inputs, positions, preds, strict=True):
        right = [float(g == ids[p + 1]) for p, g in zip(pos, greedy, strict=True)]
        hits += right
        lps += logprob
        hit_sums.append(math.fsum(right))
        lp_sums.append(math.fsum(logprob))
        samples.append({"accuracy": mean(right), "logprob": mean(logprob), "n": len(pos)})
    metrics = {"accuracy": mean(hits), "logprob": mean(lps), "n": float(len(rows)),
               "n_words": float(len(hits))}
    words = tuple(float(len(pos)) for pos in positions)
    items = {"accuracy": Items(tuple(hit_sums), words), "logprob": Items(tuple(lp_sums), words)}
    return ProbeResult(metrics, samples, items)


_LOG_MIN_PROB = float(torch.log(torch.tensor(MIN_PROB)))


def _word_start(tokenizer: Any, token: int) -> bool:
    """A token that begins a word of at least two letters (" Paris", not "," or "ing")."""
    text = tokenizer.decode([token])
    return text.startswith(" ") and sum(ch.isalpha() for ch in text) >= 2


PROBE = Probe(
    name="retention",
    load=load,
    score=score,
    primary={"harness": ("accuracy", True), "paper": ("accuracy", True)},
    doc=__doc__ or "",
    select=select,
)
