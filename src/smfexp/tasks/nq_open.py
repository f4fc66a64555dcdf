"""NaturalQuestions-open (dev): a second world-knowledge forgetting probe (Lin et al. 2025).

The first 1000 questions, in order, are the held-out probe; facts to learn (``data=facts
data.source=nq_open``) are drawn from the rest
(:func:`~smfexp.data.benchmarks.nq_open.split_heldout`).

harness (lm_eval ``nq_open``, zero-shot): ``Answer these questions:\\n\\nQ: {q}?\\nA:``
(the task description is a system turn under a chat template), greedy until "\\n" "." ","
(256 tokens), whitespace stripped, ``exact_match`` after removing articles, case and
punctuation, any gold answer. paper: ``Question: {q}\\nAnswer:``, greedy up to 32 tokens until
the first newline. Both report SQuAD ``f1`` (max over gold answers) and ``answer_logprob``: the
mean per-token log-likelihood of the *first* gold answer given the prompt, averaged over
questions (:func:`smfexp.eval.qa.score_qa`, shared with TriviaQA). Under ``paper``,
``exact_match`` uses SQuAD normalisation.

Rows (:mod:`smfexp.data.benchmarks.nq_open`, where the DataModule reads them too, with the
conversions to and from the fact schema): ``{question, answers: [str, ...]}``; split at
:data:`HELDOUT_ROWS`.
"""

from __future__ import annotations

from typing import Any

# the benchmark's rows, below the tasks (importable from here as well)
from smfexp.data.benchmarks.nq_open import DESCRIPTION, HELDOUT_ROWS, harness_prompt, load_rows
from smfexp.data.benchmarks.nq_open import nq_open_row as nq_open_row
from smfexp.data.sources import Rows
from smfexp.eval.base import Probe, ProbeResult, data_dir, take, wrap
from smfexp.eval.config import EvalConfig
from smfexp.eval.normalize import NQ_IGNORE, harness_exact_match, squad_exact_match
from smfexp.eval.qa import QAProtocol, score_qa

HARNESS_UNTIL = ("\n", ".", ",")
HARNESS_MAX_GEN_TOKS = 256
PAPER_UNTIL = ("\n",)
PAPER_MAX_GEN_TOKS = 32

SCORING = {
    "harness": QAProtocol(
        "exact_match",
        lambda pred, answers: harness_exact_match(pred, answers, NQ_IGNORE, True, True),
        HARNESS_UNTIL, HARNESS_MAX_GEN_TOKS,
    ),
    "paper": QAProtocol("exact_match", squad_exact_match, PAPER_UNTIL, PAPER_MAX_GEN_TOKS),
}


def load(cfg: EvalConfig) -> Rows:
    return take(load_rows(data_dir(cfg)), cfg, "nq_open", cap=HELDOUT_ROWS)


def build_prompt(tokenizer: Any, row: dict[str, Any], cfg: EvalConfig) -> str:
    """The protocol's prompt, or the row's own ``prompt`` (e.g. a phrasing a run trained on)."""
    if "prompt" in row:
        return wrap(tokenizer, cfg, row["prompt"])
    if cfg.protocol == "harness":
        return wrap(tokenizer, cfg, harness_prompt(row["question"]), system=DESCRIPTION)
    return wrap(tokenizer, cfg, f"Question: {row['question']}\nAnswer:")


def score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig) -> ProbeResult:
    return score_qa(
        model, tokenizer, rows, cfg, name="nq_open", protocol=SCORING[cfg.protocol],
        prompt=lambda r: build_prompt(tokenizer, r, cfg), answers=lambda r: r["answers"],
        gold=lambda r: r["answers"][0],
    )


PROBE = Probe(
    name="nq_open",
    load=load,
    score=score,
    primary={"harness": ("exact_match", True), "paper": ("f1", True)},
    doc=__doc__ or "",
)
