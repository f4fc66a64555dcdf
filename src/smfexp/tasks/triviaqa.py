"""TriviaQA: closed-book world knowledge (held-out probe) and the facts to learn (target).

The offline file holds 3000 questions: the first 1000, in order, are the held-out probe every
experiment shares; the training DataModule draws facts from the other 2000
(:func:`~smfexp.data.benchmarks.triviaqa.split_heldout`).

harness (lm_eval ``triviaqa``): ``Question: {q}?\\nAnswer:``, greedy until "\\n" "." ","
(256 tokens), whitespace stripped, ``exact_match`` against any alias after lowercasing and
deleting punctuation. paper: ``Question: {q}\\nAnswer:``, greedy 32 tokens, ``acc`` = any
normalised alias is a substring of the normalised generation.
Both report SQuAD token ``f1`` (max over aliases; Lin et al.'s fact-learning metric) and
``answer_logprob``: the mean per-token log-likelihood (nats) of the *primary*
answer (``row["answer"]``, preceded by a space) given the protocol's prompt, averaged over
questions — continuous, so forgetting shows even when exact match is ~0
(:func:`smfexp.eval.qa.score_qa`, shared with NQ-open).

Rows (:mod:`smfexp.data.benchmarks.triviaqa`, where the DataModule reads them too):
``{question, answer, aliases}``; split at :data:`HELDOUT_ROWS`.
"""

from __future__ import annotations

from typing import Any

# the benchmark's rows, below the tasks (importable from here as well)
from smfexp.data.benchmarks.triviaqa import HELDOUT_ROWS, harness_prompt, load_rows
from smfexp.data.benchmarks.triviaqa import split_heldout as split_heldout
from smfexp.data.benchmarks.triviaqa import triviaqa_row as triviaqa_row
from smfexp.data.sources import Rows
from smfexp.eval.base import Probe, ProbeResult, data_dir, take, wrap
from smfexp.eval.config import EvalConfig
from smfexp.eval.normalize import harness_exact_match, paper_substring_match
from smfexp.eval.qa import QAProtocol, score_qa

HARNESS_UNTIL = ("\n", ".", ",")
HARNESS_MAX_GEN_TOKS = 256  # HFLM.max_gen_toks
PAPER_MAX_GEN_TOKS = 32

SCORING = {
    "harness": QAProtocol(
        "exact_match",
        lambda pred, aliases: harness_exact_match(pred, aliases, ignore_case=True,
                                                  ignore_punctuation=True),
        HARNESS_UNTIL, HARNESS_MAX_GEN_TOKS,
    ),
    # the generation itself, unstripped: the match looks for an alias inside it
    "paper": QAProtocol("acc", paper_substring_match, (), PAPER_MAX_GEN_TOKS, strip=False),
}


def load(cfg: EvalConfig) -> Rows:
    return take(load_rows(data_dir(cfg)), cfg, "triviaqa", cap=HELDOUT_ROWS)


def prompt(row: dict[str, Any], protocol: str) -> str:
    """The protocol's prompt, or the row's own ``prompt`` (e.g. a phrasing a run trained on)."""
    if "prompt" in row:
        return row["prompt"]
    if protocol == "harness":
        return harness_prompt(row["question"])
    return f"Question: {row['question']}\nAnswer:"


def score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig) -> ProbeResult:
    return score_qa(
        model, tokenizer, rows, cfg, name="triviaqa", protocol=SCORING[cfg.protocol],
        prompt=lambda r: wrap(tokenizer, cfg, prompt(r, cfg.protocol)),
        answers=lambda r: r["aliases"], gold=lambda r: r["answer"], sample_loglikelihood=True,
    )


PROBE = Probe(
    name="triviaqa",
    load=load,
    score=score,
    primary={"harness": ("exact_match", True), "paper": ("acc", True)},
    doc=__doc__ or "",
)
