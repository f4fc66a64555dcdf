"""The open-answer QA scorer (TriviaQA, NQ-open): greedy generation -> a match metric against
the gold answers -> SQuAD token F1 -> the log-likelihood of the gold answer.

One scorer, so the QA probes cannot drift apart. What differs between them and between
protocols is passed in: the prompt, the gold answers, and a :class:`QAProtocol` (stop
strings, generation budget, the match rule and its metric name, whether the prediction is
the stripped generation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smfexp.eval.base import ProbeResult, answer_delimiter, encoder_for, mean, require_rows
from smfexp.eval.config import EvalConfig
from smfexp.eval.generate import generate_until
from smfexp.eval.loglik import loglikelihood
from smfexp.eval.normalize import max_f1
from smfexp.eval.paired import Items

Row = dict[str, Any]


@dataclass(frozen=True)
class QAProtocol:
    """How a QA probe generates and matches under one protocol."""

    metric: str  # the match metric's name ("exact_match", "acc")
    match: Callable[[str, list[str]], float]  # (prediction, gold answers) -> 0.0 / 1.0
    until: tuple[str, ...]  # stop strings of the greedy generation
    max_gen_toks: int  # tokens generated at most, unless ``eval.max_gen_toks`` says otherwise
    strip: bool = True  # the prediction is the generation stripped (lm_eval remove_whitespace)


def score_qa(
    model: Any,
    tokenizer: Any,
    rows: list[Row],
    cfg: EvalConfig,
    *,
    name: str,
    protocol: QAProtocol,
    prompt: Callable[[Row], str],
    answers: Callable[[Row], list[str]],
    gold: Callable[[Row], str],
    sample_loglikelihood: bool = False,
) -> ProbeResult:
    """Score ``rows``: ``prompt(row)`` is the full model input (wrapped), ``answers(row)`` what
    counts as right, ``gold(row)`` the answer whose log-likelihood is scored.

    Metrics: the protocol's match metric, ``f1`` (max over the answers) and
    ``answer_logprob`` (the gold answer's mean per-token log-likelihood, continuous, so
    forgetting shows even when exact match is ~0), each with its per-item totals.
    ``sample_loglikelihood`` adds the summed log-likelihood to each sample (the parity tests
    compare it with the harness').
    """
    require_rows(rows, name)
    enc = encoder_for(model, tokenizer, cfg)
    prompts = [prompt(r) for r in rows]
    gens = generate_until(
        model, enc, prompts, protocol.until, cfg.max_gen_toks or protocol.max_gen_toks, cfg,
        desc=f"{name} generate",
    )
    preds = [g.strip() for g in gens] if protocol.strip else gens
    golds = [answers(r) for r in rows]
    hits = [protocol.match(p, a) for p, a in zip(preds, golds, strict=True)]
    f1 = [max_f1(p, a) for p, a in zip(preds, golds, strict=True)]
    delim = answer_delimiter(cfg)
    lls = loglikelihood(
        model, enc, [(p, delim + gold(r)) for p, r in zip(prompts, rows, strict=True)], cfg,
        desc=f"{name} answer",
    )
    samples = []
    for g, p, h, f, ll in zip(gens, preds, hits, f1, lls, strict=True):
        sample = {"generation": g, "pred": p, protocol.metric: h, "f1": f,
                  "answer_logprob": ll.mean}
        if sample_loglikelihood:
            sample["answer_loglikelihood"] = ll.logprob
        samples.append(sample)
    metrics = {
        protocol.metric: mean(hits),
        "f1": mean(f1),
        "answer_logprob": mean([x.mean for x in lls]),
        "n": float(len(rows)),
    }
    items = {protocol.metric: Items.means([float(h) for h in hits]), "f1": Items.means(f1),
             "answer_logprob": Items.means([x.mean for x in lls])}
    return ProbeResult(metrics, samples, items)
