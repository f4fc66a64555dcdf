"""Scoring with the blocks below the lowest memory layer reused gives the scores of scoring
without them, reuses them across passes and runs, and survives a damaged cache."""

from __future__ import annotations

import pytest
import torch

from smfexp.eval import EvalConfig
from smfexp.eval.prefix import FrozenPrefixModel, PrefixStore, frozen_depth
from smfexp.memory import attach_memory, decoder_blocks, freeze_backbone, memory_modules
from smfexp.tasks import load_probe_rows, score_probe_samples

# fp32 on one machine: the split body is the same arithmetic, so scores agree to rounding
TOLERANCE = 1e-6


@pytest.fixture()
def smf_model(tiny_model):
    """The tiny model with a memory on its third block whose values train (as under SMF)."""
    attach_memory(tiny_model, {"layers": [2], "n_keys": 8, "heads": 1, "knn": 4, "k_dim": 16})
    freeze_backbone(tiny_model)
    for memory in memory_modules(tiny_model):
        memory.values.requires_grad_(True)
        torch.nn.init.normal_(memory.values, std=0.5)  # a memory that has learned something
    return tiny_model


def _scores(model, tokenizer, rows, cfg):
    return {p: score_probe_samples(p, model, tokenizer, rows[p], cfg).metrics for p in rows}


def test_cached_lower_blocks_score_like_the_whole_model(smf_model, tokenizer, data_dir,
                                                        tmp_path):
    blocks = decoder_blocks(smf_model)
    assert frozen_depth(smf_model, blocks) == 2  # blocks 0-1: nothing below the memory trains
    cfg = EvalConfig(probes=["wikitext", "triviaqa"], limit=8, limits={"wikitext": 2},
                     document_words=150, max_length=128, max_gen_toks=4, progress=False,
                     data_dir=str(data_dir))
    rows = {p: load_probe_rows(p, cfg) for p in cfg.probes}
    plain = _scores(smf_model, tokenizer, rows, cfg)

    store = PrefixStore(tmp_path / "prefix")
    cached = FrozenPrefixModel(smf_model, blocks, 2, store)
    first = _scores(cached, tokenizer, rows, cfg)
    assert store.misses > 0 and store.hits == 0
    second = _scores(cached, tokenizer, rows, cfg)
    assert store.hits == store.misses  # the second pass computed no lower block
    for got in (first, second):
        for probe, metrics in plain.items():
            for name, value in metrics.items():
                assert got[probe][name] == pytest.approx(value, rel=TOLERANCE), (probe, name)

    # a later run of the same model reads the rows from disk
    assert store.save() is not None
    reloaded = PrefixStore(tmp_path / "prefix")
    again = FrozenPrefixModel(smf_model, blocks, 2, reloaded)
    assert _scores(again, tokenizer, rows, cfg) == second
    assert reloaded.misses == 0 and reloaded.hits > 0


def test_a_damaged_shard_is_dropped_and_rebuilt(smf_model, tokenizer, data_dir, tmp_path,
                                                caplog):
    cfg = EvalConfig(probes=["wikitext"], limits={"wikitext": 1}, document_words=80,
                     max_length=64, progress=False, data_dir=str(data_dir))
    rows = {"wikitext": load_probe_rows("wikitext", cfg)}
    store = PrefixStore(tmp_path / "prefix")
    blocks = decoder_blocks(smf_model)
    want = _scores(FrozenPrefixModel(smf_model, blocks, 2, store), tokenizer, rows, cfg)
    shard = store.save()
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    reloaded = PrefixStore(tmp_path / "prefix")
    assert not shard.exists() and not reloaded.rows
    assert "unreadable" in caplog.text
    assert _scores(FrozenPrefixModel(smf_model, blocks, 2, reloaded), tokenizer, rows,
                   cfg) == want


def test_methods_that_train_the_lowest_block_reuse_nothing(tiny_model):
    blocks = decoder_blocks(tiny_model)
    assert frozen_depth(tiny_model, blocks) == 0  # full finetuning: embeddings train
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    next(blocks[0].parameters()).requires_grad_(True)  # e.g. a LoRA adapter in block 0
    assert frozen_depth(tiny_model, blocks) == 0
