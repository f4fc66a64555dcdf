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

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
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


def test_probes_read_paths_data_dir_from_any_cwd(data_dir, tmp_path, monkeypatch):
    """paths.data_dir is the one data location: the probes follow it, not ./data or the env."""
    from hydra import compose, initialize_config_dir

    from smfexp.eval import EvalConfig
    from smfexp.tasks import PROBES, load_probe_data

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"paths.data_dir={data_dir}",
                                                      "eval.limit=2"])
    monkeypatch.delenv(sources.DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: False)
    ecfg = EvalConfig.from_config(cfg.eval)
    for name in PROBES:
        rows = load_probe_data(name, ecfg)
        assert rows.source.startswith(f"local:{Path(data_dir).resolve()}"), name


# --------------------------------------------------------------------------- broken files
def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_binary_fact_file_names_the_file_and_line(suffix, tmp_path):
    path = tmp_path / f"facts{suffix}"
    path.write_bytes(b"\x90\x01\xfe\xff binary\n\x00\x90 more\n")
    with pytest.raises(sources.MalformedDataError) as err:
        sources.load_qa_file(path)
    text = _one_line(err)
    assert f"{path}:1" in text and "UTF-8" in text and "codec" not in text


def test_nul_bytes_in_a_csv_name_the_file_and_line(tmp_path):
    path = tmp_path / "facts.csv"
    path.write_bytes(b"question,answer\nq one,a\nq\x00two,b\n")
    with pytest.raises(sources.MalformedDataError) as err:
        sources.load_qa_file(path)
    assert f"{path}:3" in _one_line(err)


def test_truncated_jsonl_line_is_invalid_json_at_file_and_line(tmp_path, caplog):
    path = tmp_path / "facts.jsonl"
    good = [json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(3)]
    path.write_text("\n".join([*good, '{"question": "Who wro']) + "\n", encoding="utf-8")
    with pytest.raises(sources.MalformedDataError) as err:  # 1 of 4 > max_bad_fraction
        sources.load_qa_file(path)
    text = _one_line(err)
    assert f"invalid JSON at {path}:4" in text and "string indices" not in text
    many = [json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(40)]
    path.write_text("\n".join([*many[:7], "{", *many[7:]]) + "\n", encoding="utf-8")
    with caplog.at_level("WARNING"):  # under max_bad_fraction: skipped, and said where
        rows = sources.load_qa_file(path)
    assert len(rows) == 40 and rows.skipped == 1
    assert f"invalid JSON at {path}:8" in caplog.text


def test_non_utf8_dataset_files_name_the_file(tmp_path):
    (tmp_path / "wiki").mkdir()
    wiki = tmp_path / sources.LOCAL_FILES["wiki"]
    wiki.write_bytes("first line\nsecond \u00e9\n".encode("latin-1"))
    with pytest.raises(sources.MalformedDataError) as err:
        sources.load_background(tmp_path, ["wiki"])
    assert f"{wiki}:2" in _one_line(err)
    (tmp_path / "triviaqa").mkdir()
    trivia = tmp_path / sources.LOCAL_FILES["triviaqa"]
    trivia.write_bytes(b"\x90\x91\n")
    with pytest.raises(sources.MalformedDataError) as err:
        triviaqa.load_rows(tmp_path)
    assert f"{trivia}:1" in _one_line(err)
