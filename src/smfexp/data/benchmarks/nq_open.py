"""NaturalQuestions-open (dev) rows: ``{question, answers: [str, ...]}``, and the probe's
harness prompt.

The first :data:`HELDOUT_ROWS` questions, in order, are the held-out probe; facts to learn
(``data=facts data.source=nq_open``) are drawn from the rest (:func:`split_heldout`).
:func:`qa_from_nq` / :func:`nq_from_qa` convert to and from the fact schema
``{question, answer, aliases}`` of the fact-learning DataModule. The harness prompt is here
too: the probe scores the trained facts with it, so the fact stream keeps it out of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smfexp.data.benchmarks import HELDOUT_ROWS as HELDOUT_ROWS
from smfexp.data.benchmarks import split_heldout as split_heldout
from smfexp.data.sources import Rows, load_normalised, scalar_text, text_field

DESCRIPTION = "Answer these questions:\n\n"  # lm_eval's task description (a system turn)


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


def harness_prompt(question: str) -> str:
    """lm_eval ``nq_open``'s prompt for a question (after :data:`DESCRIPTION`)."""
    return f"Q: {question}?\nA:"
