"""MedMCQA rows: ``{question, options: [4 str], answer: 0..3}``.

Offline only the 4183 validation rows exist; the first :data:`EVAL_ROWS`, in order, are the
probe and the fine-tuning target (the reference papers' "first 1000"), the rest the training
pool (:func:`split`). Online the hub train split is the training set.
"""

from __future__ import annotations

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

EVAL_ROWS = 1000  # offline: validation[:1000] is the probe, the rest the training pool

_CHOICE_PREFIX = re.compile(r"^[A-D][.)]\s?")


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
