"""A user's QA file holds out questions of its own: never trained, scored like the facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smfexp.data.facts import HELDOUT_VARIANT, FactsDataModule, split_file_heldout
from smfexp.tasks import triviaqa

N_ROWS = 60
HELDOUT = 16


def _write(path: Path, n: int = N_ROWS, reverse: bool = False) -> Path:
    """A file sorted by topic (the case a prefix held-out would get wrong)."""
    rows = [{"question": f"Topic {i // 10} question {i}?", "answer": f"answer {i}"}
            for i in range(n)]
    rows = rows[::-1] if reverse else rows
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _module(tokenizer, data_dir, path: Path, **kwargs) -> FactsDataModule:
    kwargs.setdefault("n_facts", 8)
    kwargs.setdefault("heldout_size", HELDOUT)
    dm = FactsDataModule(tokenizer, data_dir=str(data_dir), source="file", path=str(path),
                         phrasings_per_step=2, **kwargs)
    dm.setup()
    return dm


def _questions(rows: list[dict]) -> set[str]:
    return {r["question"] for r in rows}


def test_heldout_is_disjoint_from_every_draw_and_shared_by_all(tokenizer, data_dir, tmp_path):
    path = _write(tmp_path / "own.jsonl")
    largest = N_ROWS - HELDOUT
    heldout_sets = []
    for seed in range(4):
        for n_facts in (8, largest):
            dm = _module(tokenizer, data_dir, path, n_facts=n_facts, facts_seed=seed)
            heldout = dm.target.variants[HELDOUT_VARIANT]
            assert len(heldout) == dm.info["n_heldout"] == HELDOUT
            assert not _questions(heldout) & _questions(dm.train_rows)
            assert not _questions(heldout) & _questions(dm.target.rows)
            heldout_sets.append(heldout)
    assert all(h == heldout_sets[0] for h in heldout_sets)
    # the largest draw trains every question that is not held out
    assert len(_questions(dm.train_rows) | _questions(heldout_sets[0])) == N_ROWS
    # spread over the file, not its first topics
    topics = {q.split(" question")[0] for q in _questions(heldout_sets[0])}
    assert len(topics) >= 4
    assert "heldout_size" in dm.info["heldout_selection"]
    assert "16 held-out questions" in dm.info["split"]


def test_heldout_does_not_depend_on_the_order_of_the_file(tokenizer, data_dir, tmp_path):
    one = _module(tokenizer, data_dir, _write(tmp_path / "a.jsonl"))
    other = _module(tokenizer, data_dir, _write(tmp_path / "b.jsonl", reverse=True))
    assert _questions(one.target.variants["heldout"]) == _questions(
        other.target.variants["heldout"])


def test_too_large_heldout_is_a_one_line_error_and_zero_turns_it_off(tokenizer, data_dir,
                                                                      tmp_path):
    path = _write(tmp_path / "own.jsonl")
    message = (r"has 60 questions, too few for data\.n_facts=45 facts plus "
               r"data\.heldout_size=16 held-out questions: lower data\.n_facts or "
               r"data\.heldout_size \(0 = none\)$")
    with pytest.raises(ValueError, match=message):
        _module(tokenizer, data_dir, path, n_facts=N_ROWS - HELDOUT + 1)
    with pytest.raises(ValueError, match=r"data\.heldout_size=61 held-out"):
        _module(tokenizer, data_dir, path, n_facts=1, heldout_size=N_ROWS + 1)
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match=r"data\.heldout_size must be an integer >= 0"):
            FactsDataModule(tokenizer, source="file", path=str(path), heldout_size=bad)
    off = _module(tokenizer, data_dir, path, n_facts=N_ROWS, heldout_size=0)
    assert HELDOUT_VARIANT not in off.target.variants and off.target.heldout_probe is None
    assert off.info["n_heldout"] == 0 and len(off.train_rows) == N_ROWS


def test_target_spec_names_heldout_and_scores_it_like_the_facts(tokenizer, data_dir, tmp_path):
    dm = _module(tokenizer, data_dir, _write(tmp_path / "own.jsonl"))
    spec = dm.target
    assert spec.heldout_probe == HELDOUT_VARIANT == "heldout"
    heldout = spec.variants["heldout"]
    assert set(heldout[0]) == set(spec.rows[0]) == {"question", "answer", "aliases"}
    # no row-level prompt: the target's scorer prompts both with the probe's own prompt
    assert triviaqa.prompt(heldout[0], "harness") == f"Question: {heldout[0]['question']}?\nAnswer:"
    assert "target_seen" in spec.variants  # the other variants stay


def test_repeated_heldout_question_never_enters_the_pool():
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    rows += [{"question": f" Q{i} ?", "answer": "again"} for i in range(20)]  # the same, again
    heldout, pool = split_file_heldout(rows, 5)
    assert len(heldout) == 5 and len(pool) == 30
    keys = {r["question"].strip(" ?").lower() for r in heldout}
    assert not keys & {r["question"].strip(" ?").lower() for r in pool}
    assert heldout == sorted(heldout, key=rows.index)  # file order


def test_benchmark_sources_keep_their_own_heldout_probe(tokenizer, data_dir):
    dm = FactsDataModule(tokenizer, data_dir=str(data_dir), n_facts=4, heldout_size=7)
    dm.setup()
    assert dm.target.heldout_probe == "triviaqa"
    assert HELDOUT_VARIANT not in dm.target.variants and dm.info["n_heldout"] == 1000
