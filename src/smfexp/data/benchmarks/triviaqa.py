"""TriviaQA rows: ``{question, answer, aliases}``, and the probe's harness prompt.

The offline file holds 3000 questions: the first :data:`HELDOUT_ROWS`, in order, are the
held-out probe every experiment shares; the fact-learning DataModule draws facts from the
other 2000 (:func:`split_heldout`). Offline rows list the primary answer among the aliases
even if the source omitted it. The harness prompt is here too: the probe scores the trained
facts with it, so the fact stream keeps it out of training.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from smfexp.data.benchmarks import HELDOUT_ROWS as HELDOUT_ROWS
from smfexp.data.benchmarks import split_heldout as split_heldout
from smfexp.data.sources import Rows, load_normalised, text_field

_TQA_CONTEXT = re.compile(r"^Question:\s*(.*?)\s*\nAnswer:\s*$", re.S)


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


def harness_prompt(question: str) -> str:
    """lm_eval ``triviaqa``'s prompt for a question."""
    return f"Question: {question}?\nAnswer:"
