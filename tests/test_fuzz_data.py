"""Hostile data rows: every normaliser returns a well-formed row or reports the row as malformed.

A malformed row must never crash a run with an unexpected exception, and never slip through
as a row with empty text or an answer index outside the options. The loaders count bad rows,
show one example and stop when there are more than ``max_bad_fraction`` of them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smfexp.data import sources
from smfexp.data.collate import IGNORE_INDEX, TokenizedExample, fit_length
from smfexp.tasks import gsm8k, medmcqa, nq_open, triviaqa

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- strategies
HUGE = "lorem ipsum " * 20_000  # ~240 kB: huge but cheap to build once
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True),
    st.sampled_from(["", " ", "\n\t", "####", "A.", "A. ", HUGE]),
    st.text(max_size=30),
    st.lists(st.text(max_size=5), max_size=6),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
WORD = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)
WORDS = WORD.filter(lambda w: w.strip() != "")

VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "medmcqa": st.one_of(
        st.fixed_dictionaries(
            {
                "question": WORDS,
                "answer": st.integers(0, 3),
                "choices": st.lists(WORDS.map(lambda w: f"A. {w}"), min_size=4, max_size=4),
            }
        ),
        st.fixed_dictionaries(
            {
                "question": WORDS,
                "cop": st.integers(0, 3),
                "opa": WORDS,
                "opb": WORDS,
                "opc": WORDS,
                "opd": WORDS,
            }
        ),
    ),
    "triviaqa": st.one_of(
        st.fixed_dictionaries(
            {
                "context": WORDS.map(lambda q: f"Question: {q}\nAnswer:"),
                "answer": WORDS,
                "aliases": st.lists(WORDS, max_size=3),
            }
        ),
        st.fixed_dictionaries(
            {
                "question": WORDS,
                "answer": st.fixed_dictionaries(
                    {"value": WORDS, "aliases": st.lists(WORDS, max_size=3)}
                ),
            }
        ),
    ),
    "nq_open": st.fixed_dictionaries(
        {"question": WORDS, "answer": st.lists(WORDS, min_size=1, max_size=3)}
    ),
    "gsm8k": st.fixed_dictionaries(
        {
            "question": WORDS,
            "answer": st.builds(lambda sol, n: f"{sol}\n#### {n}", WORDS, st.integers(0, 10**6)),
        }
    ),
    "text": st.one_of(
        WORDS,
        st.fixed_dictionaries({"text": WORDS}),
        st.fixed_dictionaries({"prompt": WORDS, "response": WORDS}),
        st.fixed_dictionaries({"context": WORDS, "continuation": st.text(max_size=10)}),
    ),
}
NORMALISERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "medmcqa": medmcqa.medmcqa_row,
    "triviaqa": triviaqa.triviaqa_row,
    "nq_open": nq_open.nq_open_row,
    "gsm8k": gsm8k.gsm8k_row,
    "text": sources.text_row,
}


@st.composite
def mutated(draw: st.DrawFn, name: str) -> Any:
    """A valid row with keys dropped / replaced by hostile values, or pure junk."""
    kind = draw(st.sampled_from(["valid", "mutated", "mutated", "junk", "top"]))
    if kind == "junk":  # arbitrary dict, keys from the schema or anything
        keys = st.sampled_from(
            [
                "question",
                "answer",
                "choices",
                "cop",
                "opa",
                "opb",
                "opc",
                "opd",
                "context",
                "aliases",
                "text",
                "prompt",
                "response",
                "continuation",
                "value",
            ]
        ) | st.text(max_size=6)
        return draw(st.dictionaries(keys, HOSTILE | JSON_VALUE, max_size=8))
    if kind == "top":  # not a mapping at all: a non-JSON line, a number, a list, None
        return draw(HOSTILE | JSON_VALUE)
    row = draw(VALID[name])
    if kind == "valid" or not isinstance(row, dict):
        return row
    for key in list(row):
        action = draw(st.sampled_from(["keep", "keep", "drop", "hostile"]))
        if action == "drop":
            del row[key]
        elif action == "hostile":
            row[key] = draw(HOSTILE)
    if isinstance(row.get("answer"), dict) and draw(st.booleans()):
        row["answer"][draw(st.sampled_from(["value", "aliases"]))] = draw(HOSTILE)
    if isinstance(row.get("choices"), list) and row["choices"] and draw(st.booleans()):
        row["choices"][draw(st.integers(0, len(row["choices"]) - 1))] = draw(HOSTILE)
    return row


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def assert_well_formed(name: str, out: dict[str, Any]) -> None:
    """The canonical schema of each dataset, as the DataModules and scorers rely on it."""
    if name == "medmcqa":
        assert _nonempty(out["question"])
        assert len(out["options"]) == 4 and all(_nonempty(o) for o in out["options"])
        assert type(out["answer"]) is int and 0 <= out["answer"] < 4
    elif name == "triviaqa":
        assert _nonempty(out["question"]) and _nonempty(out["answer"])
        assert isinstance(out["aliases"], list) and out["answer"] in out["aliases"]
        assert all(_nonempty(a) for a in out["aliases"])
    elif name == "nq_open":
        assert _nonempty(out["question"])
        assert out["answers"] and all(_nonempty(a) for a in out["answers"])
    elif name == "gsm8k":
        assert _nonempty(out["question"]) and "####" in out["answer"]
        assert _nonempty(out["final"])
    else:
        assert set(out) == {"text"} and _nonempty(out["text"])


def classify(name: str, row: Any) -> dict[str, Any] | None:
    """The normalised row, or None if ``normalise_rows`` reports it as malformed."""
    try:
        good, bad = sources.normalise_rows([row], NORMALISERS[name], name, max_bad_fraction=1.0)
    except sources.MalformedDataError:
        return None
    assert (len(good), bad) == (1, 0)
    return good[0]


# --------------------------------------------------------------------------- one row
@pytest.mark.parametrize("name", sorted(NORMALISERS))
@FUZZ
@given(data=st.data())
def test_normaliser_accepts_well_formed_or_reports(name: str, data: st.DataObject) -> None:
    row = data.draw(mutated(name))
    out = classify(name, row)  # anything but MalformedDataError propagates and fails
    if out is not None:
        assert_well_formed(name, out)


@pytest.mark.parametrize("name", sorted(NORMALISERS))
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_valid_rows_are_kept(name: str, data: st.DataObject) -> None:
    row = data.draw(VALID[name])
    out = classify(name, row)
    assert out is not None, row
    assert_well_formed(name, out)


# --------------------------------------------------------------------------- accounting
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@FUZZ
@given(data=st.data(), fraction=st.sampled_from([0.0, 0.05, 0.3, 1.0]))
def test_bad_rows_are_counted_with_one_example(data: st.DataObject, fraction: float) -> None:
    name = data.draw(st.sampled_from(sorted(NORMALISERS)))
    rows = data.draw(st.lists(mutated(name), max_size=12))
    verdicts = [classify(name, r) for r in rows]
    n_bad = sum(v is None for v in verdicts)
    handler, logger = _Records(), logging.getLogger(sources.__name__)
    logger.addHandler(handler)
    try:
        if n_bad == len(rows):
            with pytest.raises(sources.MalformedDataError, match="no usable rows"):
                sources.normalise_rows(rows, NORMALISERS[name], name, fraction)
            return
        if n_bad / len(rows) > fraction:
            with pytest.raises(sources.MalformedDataError, match="max_bad_fraction") as err:
                sources.normalise_rows(rows, NORMALISERS[name], name, fraction)
            message = str(err.value)
        else:
            good, bad = sources.normalise_rows(rows, NORMALISERS[name], name, fraction)
            assert bad == n_bad and good == [v for v in verdicts if v is not None]
            assert len(handler.messages) == (1 if n_bad else 0)
            message = handler.messages[0] if n_bad else ""
    finally:
        logger.removeHandler(handler)
    if n_bad:
        first = next(r for r, v in zip(rows, verdicts, strict=True) if v is None)
        assert f"skipped {n_bad} of {len(rows)} malformed rows" in message
        assert json.dumps(first, default=str)[:200] in message  # the one example shown
        assert "\n" not in message  # one line


LOADERS: dict[str, tuple[str, Callable[[Path, float], sources.Rows]]] = {
    "medmcqa": ("medmcqa", lambda d, f: medmcqa.load_rows(d, "validation", f)),
    "triviaqa": ("triviaqa", triviaqa.load_rows),
    "nq_open": ("nq_open", nq_open.load_rows),
    "gsm8k": ("gsm8k_test", lambda d, f: gsm8k.load_rows(d, "test", f)),
}


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n_junk_lines=st.integers(0, 3))
def test_loaders_count_bad_lines_from_disk(data: st.DataObject, n_junk_lines: int) -> None:
    name = data.draw(st.sampled_from(sorted(LOADERS)))
    key, load = LOADERS[name]
    rows = data.draw(st.lists(mutated(name), min_size=1, max_size=10))
    lines = [json.dumps(r) for r in rows] + ["{not json"] * n_junk_lines
    n_bad = sum(classify(name, r) is None for r in rows) + n_junk_lines
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / sources.LOCAL_FILES[key]
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if n_bad == len(lines):
            with pytest.raises(sources.MalformedDataError):
                load(Path(tmp), 0.5)
        elif n_bad / len(lines) > 0.5:
            with pytest.raises(sources.MalformedDataError, match=f"skipped {n_bad} of"):
                load(Path(tmp), 0.5)
        else:
            loaded = load(Path(tmp), 0.5)
            assert loaded.skipped == n_bad and len(loaded) == len(lines) - n_bad
            for row in loaded.rows:
                assert_well_formed(name, row)


# --------------------------------------------------------------------------- over-long
EXAMPLES = st.lists(
    st.integers(1, 40).flatmap(
        lambda n: st.integers(0, n).map(
            lambda p, n=n: TokenizedExample(list(range(n)), [IGNORE_INDEX] * p + list(range(p, n)))
        )
    ),
    min_size=1,
    max_size=8,
)


@FUZZ
@given(
    examples=EXAMPLES,
    max_length=st.integers(1, 30),
    policy=st.sampled_from(["drop", "truncate", "error"]),
)
def test_overlong_policy_holds(
    examples: list[TokenizedExample], max_length: int, policy: str
) -> None:
    over = [ex for ex in examples if len(ex.input_ids) > max_length]
    if policy == "error" and over:
        with pytest.raises(ValueError, match="max_length"):
            fit_length(examples, max_length, policy, "fuzz")
        return
    if policy == "drop" and len(over) == len(examples):
        with pytest.raises(ValueError, match="no examples left"):
            fit_length(examples, max_length, policy, "fuzz")
        return
    kept = fit_length(examples, max_length, policy, "fuzz")
    assert all(len(ex.input_ids) <= max_length for ex in kept)
    assert all(len(ex.input_ids) == len(ex.labels) for ex in kept)
    expected = len(examples) - (len(over) if policy == "drop" else 0)
    assert len(kept) == expected
    if policy == "truncate":  # cut from the left: the end (the target) survives
        for ex, orig in zip(kept, examples, strict=True):
            assert ex.input_ids == orig.input_ids[-max_length:]


@pytest.mark.parametrize("max_length", [0, -3])
def test_overlong_rejects_non_positive_max_length(max_length: int) -> None:
    ex = [TokenizedExample([1, 2, 3], [1, 2, 3])]
    with pytest.raises(ValueError, match="max_length"):
        fit_length(ex, max_length, "truncate", "fuzz")
