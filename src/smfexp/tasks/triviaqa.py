"""TriviaQA: closed-book world knowledge (held-out probe) and the facts to learn (target).

The offline file holds 3000 questions: the first 1000, in order, are the held-out probe every
experiment shares; the training DataModule draws facts from the other 2000
(:func:`split_heldout`).

harness (lm_eval ``triviaqa``): ``Question: {q}?\\nAnswer:``, greedy until "\\n" "." ","
(256 tokens), whitespace stripped, ``exact_match`` against any alias after lowercasing and
deleting punctuation. paper: ``Question: {q}\\nAnswer:``, greedy 32 tokens, ``acc`` = any
normalised alias is a substring of the normalised generation.
Both report SQuAD token ``f1`` (max over aliases; Lin et al.'s fact-learning metric) and
``answer_logprob``: the mean per-token log-likelihood (nats) of the *primary*
answer (``row["answer"]``, preceded by a space) given the protocol's prompt, averaged over
questions — continuous, so forgetting shows even when exact match is ~0.
Offline rows list the primary answer among the aliases even if the source omitted it.

Rows (:func:`triviaqa_row`): ``{question, answer, aliases}``; split: :func:`split_heldout`
at :data:`HELDOUT_ROWS`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from smfexp.data.sources import Rows, load_normalised, text_field
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
from smfexp.eval.generate import generate_until
from smfexp.eval.loglik import loglikelihood
from smfexp.eval.normalize import harness_exact_match, max_f1, paper_substring_match
from smfexp.eval.paired import Items

HELDOUT_ROWS = 1000
HARNESS_UNTIL = ("\n", ".", ",")
HARNESS_MAX_GEN_TOKS = 256  # HFLM.max_gen_toks
PAPER_MAX_GEN_TOKS = 32

_TQA_CONTEXT = re.compile(r"^Question:\s*(.*?)\s*\nAnswer:\s*$", re.S)


# --------------------------------------------------------------------------- rows
def triviaqa_row(row: dict[str, Any]) -> dict[str, Any]:
    """-> {question, answer, aliases}. ``question`` has no "Question:" wrapper."""
    if "context" in row:
        match = _TQA_CONTEXT.match(text_field(row["context"], "context"))
        if not match:
            raise ValueError("context is not 'Question: ...\\nAnswer:'")
        question, answer, aliases = match.group(1), row["answer"], row.get("aliases") or []
    else:  # hub rc.nocontext
        question = row["question"]
        answer, aliases = row["answer"]["value"], row["answer"]["aliases"]
    answer = text_field(answer, "answer")
    if not isinstance(aliases, list):  # a bare string would split into characters
        raise ValueError("aliases must be a list of strings")
    aliases = [a for a in aliases if isinstance(a, str) and a.strip()]
    if answer not in aliases:
        aliases = [answer, *aliases]
    return {"question": text_field(question, "question"), "answer": answer, "aliases": aliases}


def load_rows(data_dir: Path | None, max_bad_fraction: float = 0.05) -> Rows:
    """The TriviaQA question set (offline: the 3000-question subset, in file order)."""
    return load_normalised(
        "triviaqa", "triviaqa", "validation", data_dir, triviaqa_row, max_bad_fraction
    )


def split_heldout(
    rows: list[dict[str, Any]], heldout: int = HELDOUT_ROWS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(held-out probe, fact pool): the first ``heldout`` rows in file order, and the rest."""
    return rows[:heldout], rows[heldout:]


# --------------------------------------------------------------------------- probe
def load(cfg: EvalConfig) -> Rows:
    return take(load_rows(data_dir(cfg)), cfg, "triviaqa", cap=HELDOUT_ROWS)


def prompt(row: dict[str, Any], protocol: str) -> str:
    """The protocol's prompt, or the row's own ``prompt`` (e.g. a phrasing a run trained on)."""
    if "prompt" in row:
        return row["prompt"]
    if protocol == "harness":
        return f"Question: {row['question']}?\nAnswer:"
    return f"Question: {row['question']}\nAnswer:"


def score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig) -> ProbeResult:
    require_rows(rows, "triviaqa")
    enc = encoder_for(model, tokenizer, cfg)
    prompts = [wrap(tokenizer, cfg, prompt(r, cfg.protocol)) for r in rows]
    if cfg.protocol == "harness":
        gens = generate_until(
            model, enc, prompts, HARNESS_UNTIL, cfg.max_gen_toks or HARNESS_MAX_GEN_TOKS, cfg,
            desc="triviaqa generate",
        )
        preds = [g.strip() for g in gens]  # remove_whitespace + take_first
        hits = [
            harness_exact_match(p, r["aliases"], ignore_case=True, ignore_punctuation=True)
            for p, r in zip(preds, rows, strict=True)
        ]
        name = "exact_match"
    else:
        gens = generate_until(
            model, enc, prompts, (), cfg.max_gen_toks or PAPER_MAX_GEN_TOKS, cfg,
            desc="triviaqa generate",
        )
        preds = gens
        hits = [paper_substring_match(g, r["aliases"]) for g, r in zip(gens, rows, strict=True)]
        name = "acc"
    delim = answer_delimiter(cfg)
    lls = loglikelihood(
        model,
        enc,
        [(p, delim + r["answer"]) for p, r in zip(prompts, rows, strict=True)],
        cfg,
        desc="triviaqa answer",
    )
    samples = [
        {
            "generation": g,
            "pred": p,
            name: h,
            "answer_logprob": ll.mean,
            "answer_loglikelihood": ll.logprob,
        }
        for g, p, h, ll in zip(gens, preds, hits, lls, strict=True)
    ]
    f1 = [max_f1(p, r["aliases"]) for p, r in zip(preds, rows, strict=True)]
    for sample, value in zip(samples, f1, strict=True):
        sample["f1"] = value
    metrics = {
        name: mean(hits),
        "f1": mean(f1),
        "answer_logprob": mean([x.mean for x in lls]),
        "n": float(len(rows)),
    }
    items = {name: Items.means([float(h) for h in hits]), "f1": Items.means(f1),
             "answer_logprob": Items.means([x.mean for x in lls])}
    return ProbeResult(metrics, samples, items)


PROBE = Probe(
    name="triviaqa",
    load=load,
    score=score,
    primary={"harness": ("exact_match", True), "paper": ("acc", True)},
    doc=__doc__ or "",
)
