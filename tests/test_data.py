"""Data: deterministic disjoint splits, collator masking, malformed-row handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smfexp.data import sources
from smfexp.data.collate import IGNORE_INDEX, PadCollator, fit_length, tokenize_pair
from smfexp.data.facts import FactsDataModule
from smfexp.data.modules import BackgroundDataModule, MedMCQADataModule
from smfexp.tasks import medmcqa, triviaqa

MCQ_PROMPT = "Question: {question}\nChoices:\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:"


def _key(row):
    return json.dumps(row, sort_keys=True)


def test_medmcqa_offline_split_is_deterministic_and_disjoint(tokenizer, data_dir):
    dm = MedMCQADataModule(tokenizer, data_dir=str(data_dir), prompt_template=MCQ_PROMPT,
                           target_template=" {letter}")
    dm.setup()
    assert dm.info["n_target_eval"] == 1000 and len(dm.train_rows) == 3183
    assert "offline" in dm.info["split"]
    val = medmcqa.load_rows(data_dir, "validation").rows
    assert dm.target.rows == val[:1000]  # the papers' "first 1000 validation rows", in order
    assert not {_key(r) for r in dm.train_rows} & {_key(r) for r in dm.target.rows}
    again = MedMCQADataModule(tokenizer, data_dir=str(data_dir), prompt_template=MCQ_PROMPT,
                              target_template=" {letter}")
    again.setup()
    assert again.train_rows == dm.train_rows


def test_triviaqa_facts_disjoint_from_heldout_probe(tokenizer, data_dir):
    dm = FactsDataModule(tokenizer, data_dir=str(data_dir), n_facts=300)
    dm.setup()
    allrows = triviaqa.load_rows(data_dir).rows
    heldout = {r["question"] for r in allrows[:1000]}
    facts = {r["question"] for r in dm.train_rows}
    assert len(facts) == 300 and not facts & heldout
    assert dm.target.rows == dm.train_rows  # the target is scored on exactly the trained facts
    other = FactsDataModule(tokenizer, data_dir=str(data_dir), n_facts=300, facts_seed=1)
    other.setup()
    assert {r["question"] for r in other.train_rows} != facts


def test_collator_masks_prompt_and_padding(tokenizer):
    a = tokenize_pair(tokenizer, "Question: 2+2?\nAnswer:", " 4", loss_on="target")
    b = tokenize_pair(tokenizer, "Q:", " a much longer answer here", loss_on="target")
    batch = PadCollator(tokenizer.pad_token_id)([a, b])
    n_prompt = len(tokenizer("Question: 2+2?\nAnswer:", add_special_tokens=False)["input_ids"])
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (labels[0, :n_prompt] == IGNORE_INDEX).all()
    assert (labels[0, n_prompt : len(a.input_ids)] != IGNORE_INDEX).all()
    assert (labels[mask == 0] == IGNORE_INDEX).all()  # padding never carries loss
    assert mask[0].sum() == len(a.input_ids) and mask[1].sum() == len(b.input_ids)
    assert labels[0, len(a.input_ids) - 1] == tokenizer.eos_token_id
    full = tokenize_pair(tokenizer, "Q:", " x", loss_on="all", append_eos=False)
    assert full.labels == full.input_ids


def test_overlong_policy(tokenizer):
    ex = [tokenize_pair(tokenizer, "word " * 50, " end"), tokenize_pair(tokenizer, "hi", " x")]
    assert len(fit_length(ex, 20, "drop", "t")) == 1
    cut = fit_length(ex, 20, "truncate", "t")
    assert len(cut) == 2 and len(cut[0].input_ids) == 20 and cut[0].labels[-1] != IGNORE_INDEX
    with pytest.raises(ValueError, match="max_length"):
        fit_length(ex, 20, "error", "t")


def test_malformed_rows_are_reported_and_skipped(tmp_path, caplog):
    good = {"question": "q?", "choices": ["A. a", "B. b", "C. c", "D. d"], "answer": 1}
    bad = [{"question": "q?", "choices": ["A. a"], "answer": 0},
           {"question": "q?", "choices": ["A. a", "B. b", "C. c", "D. d"], "answer": 7}]
    (tmp_path / "medmcqa").mkdir()
    lines = [json.dumps(good)] * 60 + [json.dumps(b) for b in bad] + ["{not json"]
    (tmp_path / "medmcqa" / "validation.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        rows = medmcqa.load_rows(tmp_path, "validation")
    assert len(rows) == 60 and rows.skipped == 3
    assert "skipped 3 of 63 malformed rows" in caplog.text
    with pytest.raises(sources.MalformedDataError, match="max_bad_fraction"):
        medmcqa.load_rows(tmp_path, "validation", max_bad_fraction=0.01)
    (tmp_path / "medmcqa" / "validation.jsonl").write_text("")
    with pytest.raises(sources.MalformedDataError, match="no usable rows"):
        medmcqa.load_rows(tmp_path, "validation")


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(sources.DataUnavailableError, match="does not exist"):
        sources.resolve_data_dir(tmp_path / "nope")
    # a mistyped $SMFEXP_DATA_DIR is an error too, not a silent fall back to ./data or the hub
    monkeypatch.setenv(sources.DATA_DIR_ENV, str(tmp_path / "typo"))
    with pytest.raises(sources.DataUnavailableError, match="SMFEXP_DATA_DIR"):
        sources.resolve_data_dir()


def test_a_broken_data_setup_fails_the_suite_instead_of_skipping(tmp_path):
    """CI must go red, not green with skips, when the offline data cannot be found."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, sources.DATA_DIR_ENV: str(tmp_path / "missing")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{root / 'tests' / 'test_data.py'}::test_background_blocks_are_full_length"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_background_blocks_are_full_length(tokenizer, data_dir):
    dm = BackgroundDataModule(tokenizer, data_dir=str(data_dir), max_length=64, max_docs=50,
                              heldout_docs=10)
    dm.setup()
    assert dm.train_examples and all(len(e.input_ids) == 64 for e in dm.train_examples)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[1] == 64 and torch.equal(batch["labels"], batch["input_ids"])
