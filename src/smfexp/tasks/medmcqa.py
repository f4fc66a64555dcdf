"""MedMCQA: 4-option medical exam questions (the fine-tuning target of Goyal/Gupta et al.).

harness: ``Question: ..\\nChoices:\\nA. ..\\n..D. ..\\nAnswer:`` scored with continuations
" A".." D"; ``acc`` = argmax of summed log-likelihood, ``acc_norm`` = argmax of
log-likelihood / choice length in characters (identical here: every choice is one letter).
paper: ``Medical exam question:\\nQuestion: ..\\nA. ..\\nAnswer:`` with continuations
" A. {option}" scored by mean per-token log-likelihood.
Both also report ``gold_prob``: the softmax of the protocol's four choice scores at the gold
option, a continuous score that moves before accuracy does.

Rows (:func:`medmcqa_row`): ``{question, options: [4 str], answer: 0..3}``. Split
(:func:`split`): offline only the 4183 validation rows exist; the first :data:`EVAL_ROWS`, in
order, are the probe and the fine-tuning target (the reference papers' "first 1000"), the rest
the training pool. Online the hub train split is the training set.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from smfexp.data.sources import (
    DataUnavailableError,
    Rows,
    load_hub,
    local_file,
    normalise_rows,
    read_jsonl,
    scalar_text,
    text_field,
)
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
EVAL_ROWS = 1000  # offline: validation[:1000] is the probe, the rest the training pool

_CHOICE_PREFIX = re.compile(r"^[A-D][.)]\s?")


# --------------------------------------------------------------------------- rows
def medmcqa_row(row: dict[str, Any]) -> dict[str, Any]:
    """-> {question, options: [4 str], answer: 0..3}. Accepts local and hub layouts."""
    if "choices" in row:
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) != 4:
            raise ValueError("choices must be a list of 4")
        options = [_CHOICE_PREFIX.sub("", text_field(c, "choice"), count=1) for c in choices]
        answer = row["answer"]
    else:
        options = [scalar_text(row[k], k) for k in ("opa", "opb", "opc", "opd")]
        answer = row["cop"]
    if not all(o.strip() for o in options):  # e.g. a bare "A." choice
        raise ValueError("options must be non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < 4:
        raise ValueError(f"answer index {answer!r} out of range 0..3")
    return {"question": text_field(row["question"], "question"), "options": options,
            "answer": answer}


def load_rows(data_dir: Path | None, split: str, max_bad_fraction: float = 0.05) -> Rows:
    """MedMCQA ``train`` or ``validation``. Offline only ``validation`` exists (4183 rows)."""
    if data_dir is not None:
        if split != "validation":
            raise DataUnavailableError(
                "MedMCQA train split is not available offline; the DataModule carves a "
                "training pool out of the validation rows instead"
            )
        path = local_file(data_dir, "medmcqa")
        raw, source = read_jsonl(path), f"local:{path}"
    else:
        raw, source = load_hub("medmcqa", split)
    rows, bad = normalise_rows(raw, medmcqa_row, "medmcqa", max_bad_fraction)
    return Rows(rows, source, bad)


def split(
    rows: list[dict[str, Any]], eval_size: int = EVAL_ROWS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(evaluation rows, training pool): the first ``eval_size`` rows in order, and the rest."""
    return rows[:eval_size], rows[eval_size:]


# --------------------------------------------------------------------------- probe
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
