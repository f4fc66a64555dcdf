"""The fact stream (data=facts): one fact per step, disjoint from the probes, any QA source."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from smfexp.data.facts import FactsDataModule, probe_prompt
from smfexp.eval import EvalConfig
from smfexp.tasks import load_probe_rows


def _module(tokenizer, data_dir, **kwargs) -> FactsDataModule:
    kwargs.setdefault("n_facts", 12)
    dm = FactsDataModule(tokenizer, data_dir=str(data_dir), **kwargs)
    dm.setup()
    return dm


def _texts(tokenizer, batch) -> list[str]:
    return [tokenizer.decode(ids[mask.bool()]) for ids, mask
            in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


def test_per_fact_batches_hold_one_fact_each_in_stream_order(tokenizer, data_dir):
    dm = _module(tokenizer, data_dir, phrasings_per_step=4, steps_per_fact=2, passes=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 12 * 2 * 2 == dm.info["n_steps"]
    facts = [b["fact_index"] for b in batches]
    assert all(len(set(f.tolist())) == 1 for f in facts)
    order = [int(f[0]) for f in facts]
    assert order == [(s // 2) % 12 for s in range(48)]  # 2 steps per fact, 2 passes
    for batch in batches:
        question = dm.target.rows[int(batch["fact_index"][0])]["question"].rstrip("?")
        assert all(question in text for text in _texts(tokenizer, batch))
    # the two steps of a fact see different phrasings (8 templates, 4 per step)
    first, second = (_texts(tokenizer, b) for b in batches[:2])
    assert not set(first) & set(second)


def test_facts_never_include_heldout_probe_rows(tokenizer, data_dir):
    cfg = EvalConfig(probes=["triviaqa", "nq_open"], limit=None, progress=False,
                     data_dir=str(data_dir))
    for source, probe in (("triviaqa", "triviaqa"), ("nq_open", "nq_open")):
        heldout = {r["question"] for r in load_probe_rows(probe, cfg)}
        assert len(heldout) > 900
        dm = _module(tokenizer, data_dir, source=source, n_facts=1500)
        trained = {r["question"] for r in dm.train_rows}
        assert len(trained) == 1500 and not trained & heldout, source
        assert dm.target.heldout_probe == probe


def test_probe_prompt_is_not_a_training_phrasing(tokenizer, data_dir):
    harness_prompt = ["Question: {question}?\nAnswer:", " {answer}"]
    dm = _module(tokenizer, data_dir, n_facts=3, phrasings_per_step=2,
                 templates=[harness_prompt, ["Q: {question}?\nA:", " {answer}"]])
    fact = dm.target.rows[0]
    texts = [t for b in dm.train_dataloader() for t in _texts(tokenizer, b)]
    assert not any(t.startswith(probe_prompt("triviaqa", fact)) for t in texts)
    assert not any(t.startswith("Question: ") for t in texts)
    assert all(t.startswith("Q: ") for t in texts)
    # the seen phrasing is the first one trained on; the target uses the probe's own prompt
    assert dm.target.variants["target_seen"][0]["prompt"].startswith("Q: ")
    assert "prompt" not in dm.target.rows[0]
    with pytest.raises(ValueError, match="no training phrasing"):
        _module(tokenizer, data_dir, n_facts=3, templates=[harness_prompt])
    allowed = _module(tokenizer, data_dir, n_facts=3, templates=[harness_prompt],
                      train_on_probe_prompt=True, phrasings_per_step=1)
    assert _texts(tokenizer, next(iter(allowed.train_dataloader())))[0].startswith("Question:")


def test_mixed_batching_trains_the_same_examples_across_facts(tokenizer, data_dir):
    per_fact = _module(tokenizer, data_dir, phrasings_per_step=4)
    mixed = _module(tokenizer, data_dir, phrasings_per_step=4, batching="mixed")
    one = Counter(t for b in per_fact.train_dataloader() for t in _texts(tokenizer, b))
    other_batches = list(mixed.train_dataloader())
    other = Counter(t for b in other_batches for t in _texts(tokenizer, b))
    assert one == other and len(other_batches) == 12
    assert any(len(set(b["fact_index"].tolist())) > 1 for b in other_batches)


def test_user_csv_and_jsonl_files(tokenizer, data_dir, tmp_path):
    csv = tmp_path / "facts.csv"
    csv.write_text('q,a,alts\nWho wrote Hamlet?,Shakespeare,"[""William Shakespeare""]"\n'
                   "What is the capital of France,Paris,\n,missing question,\n",
                   encoding="utf-8")
    dm = _module(tokenizer, data_dir, source="file", path=str(csv), n_facts=2,
                 question_column="q", answer_column="a", aliases_column="alts",
                 max_bad_fraction=0.5, heldout_size=0)
    rows = {r["question"]: r for r in dm.train_rows}
    assert rows["Who wrote Hamlet"]["aliases"] == ["Shakespeare", "William Shakespeare"]
    assert rows["What is the capital of France"]["aliases"] == ["Paris"]
    assert dm.info["skipped_rows"] == 1 and dm.target.heldout_probe is None
    jsonl = tmp_path / "facts.jsonl"
    jsonl.write_text(json.dumps({"question": "Largest planet?", "answers": ["Jupiter"]}) + "\n",
                     encoding="utf-8")
    dm = _module(tokenizer, data_dir, source="file", path=str(jsonl), n_facts=1,
                 answer_column="answers", heldout_size=0)
    assert dm.train_rows[0]["answer"] == "Jupiter"
    with pytest.raises(ValueError, match=r"data.answer_column='answer' is not a column of "
                                         r"facts.csv; its columns: \['q', 'a', 'alts'\]"):
        _module(tokenizer, data_dir, source="file", path=str(csv), question_column="q")


def test_bad_settings_are_one_line_errors(tokenizer, data_dir):
    with pytest.raises(ValueError, match=r"data\.batching='chunked'; valid: per_fact, mixed"):
        FactsDataModule(tokenizer, batching="chunked")
    with pytest.raises(ValueError, match=r"data\.source=file needs data\.path"):
        FactsDataModule(tokenizer, source="file")
    with pytest.raises(ValueError, match=r"data\.phrasings_per_step must be a positive integer"):
        FactsDataModule(tokenizer, phrasings_per_step=0)
    with pytest.raises(ValueError, match=r"does not contain \{answer\}"):
        FactsDataModule(tokenizer, templates=[["Q: {question}", " A"]])
    with pytest.raises(ValueError, match="fact pool has 2000 questions"):
        _module(tokenizer, data_dir, n_facts=2001)


def test_resumed_stream_continues_at_the_checkpointed_step(tokenizer, data_dir):
    dm = _module(tokenizer, data_dir, phrasings_per_step=2, steps_per_fact=2)
    full = [b["fact_index"][0].item() for b in dm.train_dataloader()]
    dm.load_state_dict({"epoch": 0, "batches_done": 5})
    rest = [b["fact_index"][0].item() for b in dm.train_dataloader()]
    assert rest == full[5:]


def test_nested_streams_are_prefixes_of_one_stream(tokenizer, data_dir):
    """N facts of a draw are the first N of any longer stream of that draw (one long run
    measures every N); another draw is other facts."""
    long = _module(tokenizer, data_dir, n_facts=256, facts_seed=3)
    for n in (1, 64):
        short = _module(tokenizer, data_dir, n_facts=n, facts_seed=3)
        assert short.target.rows == long.target.rows[:n]
        assert short.train_rows == long.train_rows[:n]
    other = _module(tokenizer, data_dir, n_facts=64, facts_seed=4)
    overlap = {r["question"] for r in other.target.rows} & {
        r["question"] for r in long.target.rows[:64]}
    assert len(overlap) < 16  # 64 of 2000: a few shared by chance at most
    assert long.info["facts_seed"] == 3
