"""MedMCQA: 4-option medical exam questions (the fine-tuning target of Goyal/Gupta et al.).

harness: ``Question: ..\\nChoices:\\nA. ..\\n..D. ..\\nAnswer:`` scored with continuations
" A".." D"; ``acc`` = argmax of summed log-likelihood, ``acc_norm`` = argmax of
log-likelihood / choice length in characters (identical here: every choice is one letter).
paper: ``Medical exam question:\\nQuestion: ..\\nA. ..\\nAnswer:`` with continuations
" A. {option}" scored by mean per-token log-likelihood.
Both also report ``gold_prob``: the softmax of the protocol's four choice scores at the gold
option, a continuous score that moves before accuracy does.

Rows (:mod:`smfexp.data.benchmarks.medmcqa`, where the fine-tuning DataModule reads them
too): ``{question, options: [4 str], answer: 0..3}``. Offline, the first :data:`EVAL_ROWS`
validation rows, in order, are the probe and the fine-tuning target (the reference papers'
"first 1000"), the rest the training pool.
"""

from __future__ import annotations

import math
from typing import Any

# the benchmark's rows, below the tasks (importable from here as well)
from smfexp.data.benchmarks.medmcqa import EVAL_ROWS, load_rows
from smfexp.data.benchmarks.medmcqa import medmcqa_row as medmcqa_row
from smfexp.data.sources import Rows
from smfexp.eval.base import (
    Probe,
    ProbeResult,
    answer_delimiter,
    data_dir,
    encoder_for,
    mean,
    require_rows,
    take,
    wrap,
)
from smfexp.eval.config import EvalConfig
from smfexp.eval.loglik import loglikelihood
from smfexp.eval.paired import Items

LETTERS = ("A", "B", "C", "D")


def load(cfg: EvalConfig) -> Rows:
    """First ``limit`` validation rows in order; offline never past row 1000 (training pool)."""
    rows = load_rows(data_dir(cfg), "validation")
    offline = rows.source.startswith("local:")
    return take(rows, cfg, "medmcqa", cap=EVAL_ROWS if offline else None)


def harness_prompt(row: dict[str, Any]) -> str:
    """lm_eval/tasks/medmcqa/utils_medmcqa.py ``doc_to_text``."""
    prompt = "Question: " + row["question"] + "\nChoices:\n"
    for letter, option in zip(LETTERS, row["options"], strict=True):
        prompt += f"{letter}. {option}\n"
    return prompt + "Answer:"


def paper_prompt(row: dict[str, Any]) -> str:
    body = "".join(
        f"{letter}. {option}\n" for letter, option in zip(LETTERS, row["options"], strict=True)
    )
    return f"Medical exam question:\nQuestion: {row['question']}\n{body}Answer:"


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # first maximum, like np.argmax


def _softmax_at(values: list[float], index: int) -> float:
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    return weights[index] / sum(weights)


def score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig) -> ProbeResult:
    require_rows(rows, "medmcqa")
    enc = encoder_for(model, tokenizer, cfg)
    delim = answer_delimiter(cfg)
    pairs: list[tuple[str, str]] = []
    for row in rows:
        if cfg.protocol == "harness":
            ctx = wrap(tokenizer, cfg, harness_prompt(row))
            pairs += [(ctx, delim + letter) for letter in LETTERS]
        else:
            ctx = wrap(tokenizer, cfg, paper_prompt(row))
            pairs += [
                (ctx, f"{delim}{letter}. {option}")
                for letter, option in zip(LETTERS, row["options"], strict=True)
            ]
    lls = loglikelihood(model, enc, pairs, cfg, desc="medmcqa")
    acc, acc_norm, gold_prob, samples = [], [], [], []
    for i, row in enumerate(rows):
        group = lls[4 * i : 4 * i + 4]
        sums = [x.logprob for x in group]
        gold = row["answer"]
        if cfg.protocol == "harness":
            scores = sums
            norm = [s / len(letter) for s, letter in zip(sums, LETTERS, strict=True)]
            acc_norm.append(float(_argmax(norm) == gold))
        else:
            scores = [x.mean for x in group]
        pred = _argmax(scores)
        acc.append(float(pred == gold))
        gold_prob.append(_softmax_at(scores, gold))
        samples.append(
            {
                "loglikelihoods": sums,
                "n_tokens": [x.n_tokens for x in group],
                "pred": pred,
                "gold": gold,
            }
        )
    metrics = {"acc": mean(acc), "gold_prob": mean(gold_prob), "n": float(len(rows))}
    items = {"acc": Items.means(acc), "gold_prob": Items.means(gold_prob)}
    if acc_norm:
        metrics["acc_norm"] = mean(acc_norm)
        items["acc_norm"] = Items.means(acc_norm)
    return ProbeResult(metrics, samples, items)


PROBE = Probe(
    name="medmcqa",
    load=load,
    score=score,
    primary={"harness": ("acc", True), "paper": ("acc", True)},
    doc=__doc__ or "",
)
