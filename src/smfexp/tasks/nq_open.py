"""NaturalQuestions-open (dev): a second world-knowledge forgetting probe (Lin et al. 2025).

The first 1000 questions, in order, are the held-out probe; facts to learn (``data=facts
data.source=nq_open``) are drawn from the rest (:func:`split_heldout`).

harness (lm_eval ``nq_open``, zero-shot): ``Answer these questions:\\n\\nQ: {q}?\\nA:``
(the task description is a system turn under a chat template), greedy until "\\n" "." ","
(256 tokens), whitespace stripped, ``exact_match`` after removing articles, case and
punctuation, any gold answer. paper: ``Question: {q}\\nAnswer:``, greedy up to 32 tokens until
the first newline. Both report SQuAD ``f1`` (max over gold answers) and ``answer_logprob``: the
mean per-token log-likelihood of the *first* gold answer given the prompt, averaged over
questions. Under ``paper``, ``exact_match`` uses SQuAD normalisation.

Rows (:func:`nq_open_row`): ``{question, answers: [str, ...]}``; split: :func:`split_heldout`
at :data:`HELDOUT_ROWS`. :func:`qa_from_nq` / :func:`nq_from_qa` convert to and from the fact
schema ``{question, answer, aliases}`` of the fact-learning DataModule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smfexp.data.sources import Rows, load_normalised, scalar_text, text_field
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
from smfexp.eval.normalize import NQ_IGNORE, harness_exact_match, max_f1, squad_exact_match
from smfexp.eval.paired import Items

DESCRIPTION = "Answer these questions:\n\n"
HARNESS_UNTIL = ("\n", ".", ",")
HARNESS_MAX_GEN_TOKS = 256
PAPER_UNTIL = ("\n",)
PAPER_MAX_GEN_TOKS = 32


HELDOUT_ROWS = 1000


# --------------------------------------------------------------------------- rows
def nq_open_row(row: dict[str, Any]) -> dict[str, Any]:
    """-> {question, answers: [str, ...]}."""
    answers = row["answer"]
    if not isinstance(answers, list) or not answers:
        raise ValueError("answer must be a non-empty list")
    return {
        "question": text_field(row["question"], "question"),
        "answers": [scalar_text(a, "answer") for a in answers],
    }


def load_rows(data_dir: Path | None, max_bad_fraction: float = 0.05) -> Rows:
    """NaturalQuestions-open dev (3610 questions)."""
    return load_normalised(
        "nq_open", "nq_open", "validation", data_dir, nq_open_row, max_bad_fraction
    )


def qa_from_nq(row: dict[str, Any]) -> dict[str, Any]:
    """An NQ-open row as a fact: the first gold answer is trained, every one counts as right."""
    return {"question": row["question"], "answer": row["answers"][0],
            "aliases": list(row["answers"])}


def nq_from_qa(row: dict[str, Any]) -> dict[str, Any]:
    """A fact row in the NQ-open scorer's schema (``answers``), keeping the fact's fields."""
    return {**row, "answers": list(row["aliases"])}


def split_heldout(
    rows: list[dict[str, Any]], heldout: int = HELDOUT_ROWS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(held-out probe, fact pool): the first ``heldout`` rows in file order, and the rest."""
    return rows[:heldout], rows[heldout:]


# --------------------------------------------------------------------------- probe
def load(cfg: EvalConfig) -> Rows:
    return take(load_rows(data_dir(cfg)), cfg, "nq_open", cap=HELDOUT_ROWS)


def build_prompt(tokenizer: Any, row: dict[str, Any], cfg: EvalConfig) -> str:
    """The protocol's prompt, or the row's own ``prompt`` (e.g. a phrasing a run trained on)."""
    if "prompt" in row:
        return wrap(tokenizer, cfg, row["prompt"])
    if cfg.protocol == "harness":
        return wrap(tokenizer, cfg, f"Q: {row['question']}?\nA:", system=DESCRIPTION)
    return wrap(tokenizer, cfg, f"Question: {row['question']}\nAnswer:")


def score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig) -> ProbeResult:
    require_rows(rows, "nq_open")
    enc = encoder_for(model, tokenizer, cfg)
    prompts = [build_prompt(tokenizer, r, cfg) for r in rows]
    harness = cfg.protocol == "harness"
    gens = generate_until(
        model,
        enc,
        prompts,
        HARNESS_UNTIL if harness else PAPER_UNTIL,
        cfg.max_gen_toks or (HARNESS_MAX_GEN_TOKS if harness else PAPER_MAX_GEN_TOKS),
        cfg,
        desc="nq_open generate",
    )
    preds = [g.strip() for g in gens]
    if harness:
        em = [
            harness_exact_match(p, r["answers"], NQ_IGNORE, True, True)
            for p, r in zip(preds, rows, strict=True)
        ]
    else:
        em = [squad_exact_match(p, r["answers"]) for p, r in zip(preds, rows, strict=True)]
    f1 = [max_f1(p, r["answers"]) for p, r in zip(preds, rows, strict=True)]
    delim = answer_delimiter(cfg)
    lls = loglikelihood(
        model,
        enc,
        [(p, delim + r["answers"][0]) for p, r in zip(prompts, rows, strict=True)],
        cfg,
        desc="nq_open answer",
    )
    samples = [
        {"generation": g, "pred": p, "exact_match": e, "f1": f, "answer_logprob": ll.mean}
        for g, p, e, f, ll in zip(gens, preds, em, f1, lls, strict=True)
    ]
    metrics = {
        "exact_match": mean(em),
        "f1": mean(f1),
        "answer_logprob": mean([x.mean for x in lls]),
        "n": float(len(rows)),
    }
    items = {"exact_match": Items.means([float(e) for e in em]), "f1": Items.means(f1),
             "answer_logprob": Items.means([x.mean for x in lls])}
    return ProbeResult(metrics, samples, items)


PROBE = Probe(
    name="nq_open",
    load=load,
    score=score,
    primary={"harness": ("exact_match", True), "paper": ("f1", True)},
    doc=__doc__ or "",
)
