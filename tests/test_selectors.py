"""Selectors against a direct float64 NumPy computation of the docs/method.md formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smfexp.smf.background import LayerBackground
from smfexp.smf.selectors import (
    SELECTORS,
    kl_scores,
    select,
    selector_score_stats,
    tfidf_scores,
)


def _problem(seed: int, n: int = 400, read_frac: float = 0.3):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, n) * (rng.random(n) < read_frac)
    n_batches = 50
    df = rng.integers(0, n_batches + 1, n)
    reads = df * rng.integers(1, 20, n)  # reads >= df, 0 when df is 0
    bg = LayerBackground(torch.from_numpy(df), torch.from_numpy(reads), n_batches)
    return torch.from_numpy(counts).long(), bg, counts, df, reads, n_batches


def _np_scores(name: str, c: np.ndarray, df: np.ndarray, b: np.ndarray, n_batches: int):
    c = c.astype(np.float64)
    p = c / c.sum()
    if name == "tfidf":
        return p * np.log((n_batches + 1) / (df + 1.0))
    q = (b + 1.0) / np.sum(b + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(c > 0, p * np.log(p / q), 0.0)


@pytest.mark.parametrize("name", ["tfidf", "kl"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_and_selection_match_numpy(name: str, seed: int) -> None:
    counts, bg, c, df, b, n_batches = _problem(seed)
    ref = _np_scores(name, c, df, b, n_batches)
    read, scores = (tfidf_scores if name == "tfidf" else kl_scores)(counts, bg)
    np.testing.assert_array_equal(read.numpy(), np.flatnonzero(c))
    assert scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), ref[c > 0], rtol=1e-12, atol=1e-15)

    t = 25
    sel = select(name, counts, bg, t)
    assert sel.indices.dtype == torch.int64
    assert torch.all(sel.indices[1:] > sel.indices[:-1])  # ascending, unique
    assert len(sel.indices) == t
    # NumPy top-t: highest score, ties to the lower index.
    read_np = np.flatnonzero(c)
    order = np.lexsort((read_np, -ref[read_np]))
    expected = np.sort(read_np[order[:t]])
    np.testing.assert_array_equal(sel.indices.numpy(), expected)
    np.testing.assert_allclose(sel.scores.numpy(), ref[expected], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_unread_never_selected_and_t_larger_than_read(name: str) -> None:
    counts, bg, c, *_ = _problem(3, n=200, read_frac=0.1)
    n_read = int((c > 0).sum())
    g = torch.Generator().manual_seed(0)
    sel = select(name, counts, bg, n_read + 100, g).indices
    np.testing.assert_array_equal(sel.numpy(), np.flatnonzero(c))  # every read slot, no more
    small = select(name, counts, bg, 5, g).indices
    assert bool((counts[small] > 0).all())
    assert len(small) == (n_read if name == "all" else 5)


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_empty_counts_select_nothing(name: str) -> None:
    _, bg, *_ = _problem(0)
    sel = select(name, torch.zeros(400, dtype=torch.long), bg, 10, None).indices
    assert sel.numel() == 0 and sel.dtype == torch.int64


def test_ties_broken_by_lower_index() -> None:
    counts = torch.tensor([0, 2, 2, 0, 2, 2, 2])
    bg = LayerBackground(torch.zeros(7, dtype=torch.long), torch.zeros(7, dtype=torch.long), 9)
    for name in ("tfidf", "kl"):
        assert select(name, counts, bg, 3, None).indices.tolist() == [1, 2, 4]


def test_kl_prefers_slots_rare_in_background() -> None:
    counts = torch.tensor([5, 5, 5, 0])
    reads = torch.tensor([1000, 0, 10, 7])
    bg = LayerBackground((reads > 0).long(), reads, 10)
    assert select("kl", counts, bg, 1, None).indices.tolist() == [1]
    assert select("kl", counts, bg, 2, None).indices.tolist() == [1, 2]


def test_random_is_deterministic_with_seeded_generator() -> None:
    counts, *_ = _problem(4)
    pick = lambda seed: select(
        "random", counts, None, 10, torch.Generator().manual_seed(seed)
    ).indices
    a, b, other = pick(123), pick(123), pick(7)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert len(a) == 10 and bool((counts[a] > 0).all())


def test_errors_name_the_valid_selectors() -> None:
    with pytest.raises(ValueError, match="valid: tfidf, kl, tf, random, all"):
        select("nope", torch.tensor([1]), None, 1)
    counts = torch.tensor([1, 0, 2])
    with pytest.raises(ValueError, match="background"):
        select("kl", counts, None, 1, None)
    bad = LayerBackground(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="slots"):
        select("tfidf", counts, bad, 1, None)


@pytest.mark.parametrize("name", list(SELECTORS))
def test_every_selector_keeps_read_slots_in_ascending_order(name: str) -> None:
    counts, bg, *_ = _problem(7)
    sel = select(name, counts, bg, 20, torch.Generator().manual_seed(0))
    assert sel.indices.numel() == (int((counts > 0).sum()) if name == "all" else 20)
    assert bool((counts[sel.indices] > 0).all())
    assert torch.equal(sel.indices, sel.indices.sort().values)


def test_tf_ranks_by_counts_alone_and_tfidf_discounts_what_the_background_reads() -> None:
    counts = torch.tensor([5, 4, 1, 0])
    common = LayerBackground(torch.tensor([10, 0, 0, 0]), torch.tensor([99, 0, 0, 0]), 10)
    assert select("tf", counts, None, 2).indices.tolist() == [0, 1]
    assert select("tfidf", counts, common, 2).indices.tolist() == [1, 2]  # slot 0: df = N


def test_score_stats() -> None:
    stats = selector_score_stats(torch.tensor([0.5, 1.0, 3.0]))
    assert stats == {"n": 3.0, "min": 0.5, "mean": 1.5, "max": 3.0}
    assert selector_score_stats(torch.empty(0))["n"] == 0.0


@pytest.mark.parametrize("name", ["tfidf", "kl", "tf"])
def test_written_weight_scales_the_scores_of_written_rows(name: str) -> None:
    """written_weight w multiplies the score of rows already written, against NumPy."""
    counts, bg, c, df, reads, n_batches = _problem(3)
    written = torch.zeros(counts.numel(), dtype=torch.bool)
    written[::3] = True
    t = 20
    for weight in (0.25, 4.0):
        chosen = select(name, counts, bg, t, written=written, written_weight=weight)
        base = (c / c.sum() if name == "tf" else _np_scores(name, c, df, reads, n_batches))
        expected = np.where(written.numpy(), base * weight, base)
        expected = np.where(c > 0, expected, -np.inf)
        top = np.sort(np.argsort(-expected, kind="stable")[:t])
        assert chosen.indices.tolist() == top.tolist()
    reuse = select(name, counts, bg, t, written=written, written_weight=4.0).indices
    fresh = select(name, counts, bg, t, written=written, written_weight=0.25).indices
    assert written[reuse].sum() > written[fresh].sum()  # > 1 reuses, < 1 avoids written rows
    plain = select(name, counts, bg, t).indices
    assert torch.equal(select(name, counts, bg, t, written=written).indices, plain)  # w = 1


def test_written_weight_needs_a_scoring_selector() -> None:
    counts, bg, *_ = _problem(0)
    with pytest.raises(ValueError, match="written_weight applies to the selectors tfidf"):
        select("random", counts, bg, 4, written=torch.ones(counts.numel(), dtype=torch.bool),
               written_weight=2.0)
