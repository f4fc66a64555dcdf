"""Access counting (padding, micro-batch accumulation) and background statistics (cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from smfexp.smf.background import (
    BackgroundStats,
    compute_background_stats,
)
from smfexp.smf.counting import AccessCounter


def _reference_counts(indices: torch.Tensor, mask: torch.Tensor, n: int) -> np.ndarray:
    idx = indices.reshape(indices.shape[0], indices.shape[1], -1).numpy()
    m = mask.numpy().astype(bool)
    return np.bincount(idx[m].reshape(-1), minlength=n)


def test_counts_match_numpy_and_ignore_padding() -> None:
    g = torch.Generator().manual_seed(0)
    n = 50
    idx = torch.randint(0, n, (3, 7, 4), generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 2:] = False
    counter = AccessCounter([n, 20])
    counter.add(0, idx, mask)
    assert counter.counts(0).dtype == torch.int64
    np.testing.assert_array_equal(counter.counts(0).numpy(), _reference_counts(idx, mask, n))
    assert int(counter.counts(0).sum()) == int(mask.sum()) * 4
    assert int(counter.counts(1).sum()) == 0  # other layers untouched


def test_padding_reads_add_nothing() -> None:
    """Reads at masked positions point at slots no real token reads: they must stay 0."""
    real = torch.zeros(1, 3, 2, dtype=torch.long)  # real tokens read slot 0 only
    pad = torch.full((1, 2, 2), 9, dtype=torch.long)  # padding would read slot 9
    idx = torch.cat([real, pad], dim=1)
    mask = torch.tensor([[1, 1, 1, 0, 0]])  # int mask works too
    counter = AccessCounter([10])
    counter.add(0, idx, mask)
    assert counter.counts(0)[9] == 0
    assert counter.counts(0)[0] == 6


def test_accumulates_over_micro_batches_until_reset() -> None:
    g = torch.Generator().manual_seed(1)
    n = 30
    counter = AccessCounter([n])
    expected = np.zeros(n, dtype=np.int64)
    for _ in range(3):  # gradient-accumulation micro-batches
        idx = torch.randint(0, n, (2, 5, 2, 3), generator=g)  # [B, T, heads, knn]
        mask = torch.rand(2, 5, generator=g) > 0.3
        counter.add(0, idx, mask)
        expected += _reference_counts(idx, mask, n)
    np.testing.assert_array_equal(counter.counts(0).numpy(), expected)
    counter.reset()
    assert int(counter.counts(0).abs().sum()) == 0


def test_mask_none_counts_everything_and_shape_checked() -> None:
    counter = AccessCounter([5])
    counter.add(0, torch.tensor([[[1, 2], [2, 3]]]))
    assert counter.counts(0).tolist() == [0, 1, 2, 1, 0]
    with pytest.raises(ValueError):
        counter.add(0, torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(2, 1))


def test_all_reduce_noop_and_single_rank(tmp_path) -> None:
    counter = AccessCounter([4, 3])
    counter.add(0, torch.tensor([[[0, 1]]]))
    counter.add(1, torch.tensor([[[2, 2]]]))
    counter.all_reduce()  # not initialised: no-op
    assert counter.counts(0).tolist() == [1, 1, 0, 0]
    if not dist.is_available() or dist.is_initialized():
        return
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        counter.all_reduce()
        assert counter.counts(0).tolist() == [1, 1, 0, 0]
        assert counter.counts(1).tolist() == [0, 0, 2]
    finally:
        dist.destroy_process_group()


# -- background statistics ------------------------------------------------------------


class _FakeMemory(nn.Module):
    """Reads slot (token * mult + k) % n for k < K; records last_indices like the real layer."""

    def __init__(self, n: int, mult: int, k: int = 3) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.zeros(n, 2))
        self.mult, self.k = mult, k
        self.last_indices: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor) -> None:
        ks = torch.arange(self.k)
        self.last_indices = (input_ids.unsqueeze(-1) * self.mult + ks) % self.values.shape[0]


class _FakeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mems = nn.ModuleList([_FakeMemory(40, 3), _FakeMemory(25, 7)])

    def forward(self, input_ids, attention_mask):
        for m in self.mems:
            m(input_ids)


def _batches(seed: int = 0, n: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 30, (2, 6), generator=g)
        mask = torch.ones(2, 6, dtype=torch.long)
        mask[1, 3:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_compute_background_stats_matches_reference() -> None:
    model = _FakeModel().train()
    batches = _batches()
    stats = compute_background_stats(model, batches, list(model.mems), progress=False)
    assert model.training  # restored
    assert stats.n_batches == len(batches)
    for li, mem in enumerate(model.mems):
        n = mem.values.shape[0]
        df = np.zeros(n, dtype=np.int64)
        reads = np.zeros(n, dtype=np.int64)
        for b in batches:
            idx = (b["input_ids"].unsqueeze(-1) * mem.mult + torch.arange(mem.k)) % n
            c = _reference_counts(idx, b["attention_mask"], n)
            reads += c
            df += c > 0
        np.testing.assert_array_equal(stats.df[li].numpy(), df)
        np.testing.assert_array_equal(stats.reads[li].numpy(), reads)
        stats.reads[li] += 0  # result is a normal tensor (not an inference tensor)


def test_save_load_roundtrip(tmp_path) -> None:
    model = _FakeModel()
    stats = compute_background_stats(model, _batches(), list(model.mems), progress=False)
    stats.meta = {"key": {"a": 1}}
    path = stats.save(tmp_path / "bg.safetensors")
    assert json.loads(path.with_suffix(".json").read_text())["n_batches"] == 4
    loaded = BackgroundStats.load(path)
    assert loaded.n_batches == stats.n_batches and loaded.meta == stats.meta
    for a, b in zip(loaded.df + loaded.reads, stats.df + stats.reads, strict=True):
        assert torch.equal(a, b)
    lb = loaded.layer(1)
    assert lb.n_batches == 4 and lb.df.shape == (25,)
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_key_usage_tells_a_collapsed_memory_from_a_spread_one() -> None:
    even = torch.full((1000,), 5, dtype=torch.int64)
    collapsed = torch.zeros(1000, dtype=torch.int64)
    collapsed[:10] = 490
    collapsed[10:30] = 5
    stats = BackgroundStats([(r > 0).long() for r in (even, collapsed)], [even, collapsed], 1)
    spread_layer, collapsed_layer = stats.summary()["layers"]
    assert spread_layer["coverage"] == 1.0 and spread_layer["top1pct_read_share"] == 0.01
    assert collapsed_layer["coverage"] == 0.03
    assert collapsed_layer["top1pct_read_share"] == 4900 / 5000
