"""Row selectors for sparse memory finetuning (one call per layer per optimizer step).

Every selector looks only at the slots the step actually read (c_i > 0), scores them in
float64 and keeps the ``t`` best. Ties are broken by slot index (lower index wins), so a
selection is a deterministic function of its inputs. Formulas: docs/method.md, "Selectors".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import torch
from torch import Tensor

from smfexp.smf.background import LayerBackground


class Selection(NamedTuple):
    """Selected slot indices (ascending) and their scores (float64, same order)."""

    indices: Tensor
    scores: Tensor


Selector = Callable[[Tensor, LayerBackground | None, int, torch.Generator | None], Selection]


def batch_distribution(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Read slots (ascending) and p_i = c_i / sum_j c_j over them, in float64.

    One ``nonzero`` per call: everything after it is proportional to the number of read
    slots, not to the table size.
    """
    if counts.dim() != 1:
        raise ValueError(f"counts must be 1-D [n_slots], got {tuple(counts.shape)}")
    read = (counts > 0).nonzero().squeeze(1)
    c = counts.index_select(0, read).double()
    return read, c / c.sum() if c.numel() else c


def _background_at(values: Tensor, read: Tensor) -> Tensor:
    """Gather background entries for the read slots without moving the whole table."""
    return values.index_select(0, read.to(values.device)).to(read.device, torch.float64)


def _check_background(counts: Tensor, background: LayerBackground | None, name: str) -> None:
    if background is None:
        raise ValueError(f"selector {name!r} needs background statistics")
    if background.df.shape[0] != counts.shape[0]:
        raise ValueError(
            f"background has {background.df.shape[0]} slots, counts have {counts.shape[0]}"
        )


def tfidf_scores(counts: Tensor, background: LayerBackground | None) -> tuple[Tensor, Tensor]:
    """score_i = p_i * ln((N + 1) / (df_i + 1)) on read slots (Lin et al. 2025)."""
    _check_background(counts, background, "tfidf")
    assert background is not None
    read, p = batch_distribution(counts)
    df = _background_at(background.df, read)
    idf = torch.log((background.n_batches + 1) / (df + 1))
    return read, p * idf


def kl_scores(counts: Tensor, background: LayerBackground | None) -> tuple[Tensor, Tensor]:
    """score_i = p_i * ln(p_i / q_i), q_i = (b_i + 1) / sum_j (b_j + 1) (Goyal et al. 2026)."""
    _check_background(counts, background, "kl")
    assert background is not None
    read, p = batch_distribution(counts)
    # The normaliser runs over every slot of the table (add-one smoothing of unread ones).
    log_total = torch.log(background.reads.sum().to(read.device, torch.float64) + counts.numel())
    log_q = torch.log(_background_at(background.reads, read) + 1) - log_total
    return read, p * (torch.log(p) - log_q)


def top_t(read: Tensor, scores: Tensor, t: int) -> Selection:
    """The ``t`` highest scores; stable sort so equal scores keep ascending slot order."""
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t}")
    order = torch.sort(scores, descending=True, stable=True).indices[:t]
    keep = order.sort().values  # read is ascending, so this orders the result by slot index
    return Selection(read.index_select(0, keep), scores.index_select(0, keep))


def tf_scores(counts: Tensor, background: LayerBackground | None = None
              ) -> tuple[Tensor, Tensor]:
    """score_i = p_i, no background at all (Lin et al.'s "TF only" ablation)."""
    return batch_distribution(counts)


ScoreFn = Callable[[Tensor, LayerBackground | None], tuple[Tensor, Tensor]]
# the selectors that keep the ``t`` highest scores of the read slots (written_weight applies)
SCORES: Mapping[str, ScoreFn] = MappingProxyType(
    {"tfidf": tfidf_scores, "kl": kl_scores, "tf": tf_scores})


def _top_scores(score: ScoreFn) -> Selector:
    def pick(counts: Tensor, background: LayerBackground | None, t: int,
             generator: torch.Generator | None = None) -> Selection:
        return top_t(*score(counts, background), t)

    return pick


def _select_random(counts: Tensor, background: LayerBackground | None, t: int,
                   generator: torch.Generator | None = None) -> Selection:
    """``t`` read slots uniformly without replacement; the score reported is p_i."""
    if t < 0:
        raise ValueError(f"t must be >= 0, got {t}")
    read, p = batch_distribution(counts)
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(read.numel(), generator=generator, device=device)[:t]
    keep = perm.sort().values.to(read.device)
    return Selection(read.index_select(0, keep), p.index_select(0, keep))


def _select_all(counts: Tensor, background: LayerBackground | None, t: int,
                generator: torch.Generator | None = None) -> Selection:
    """Every read slot (dense memory finetuning); ``t`` is ignored."""
    return Selection(*batch_distribution(counts))


SELECTORS: Mapping[str, Selector] = MappingProxyType({
    **{name: _top_scores(score) for name, score in SCORES.items()},
    "random": _select_random,
    "all": _select_all,
})
NEEDS_BACKGROUND = frozenset({"tfidf", "kl"})


def select(
    name: str,
    counts: Tensor,
    background: LayerBackground | None,
    t: int,
    generator: torch.Generator | None = None,
    written: Tensor | None = None,
    written_weight: float = 1.0,
) -> Selection:
    """The rows selector ``name`` picks from one layer's counts (and their scores).

    ``written`` (bool per slot: rows earlier steps changed) with ``written_weight`` != 1
    multiplies those rows' scores: > 1 reuses rows already written, so the set of rows that
    general text finds changed grows more slowly; < 1 spreads the writes over fresh rows.
    """
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; valid: {', '.join(SELECTORS)}")
    if written is None or written_weight == 1.0:
        return SELECTORS[name](counts, background, t, generator)
    if name not in SCORES:
        raise ValueError(f"method.written_weight applies to the selectors {', '.join(SCORES)}, "
                         f"not {name!r}")
    read, scores = SCORES[name](counts, background)
    reused = written.index_select(0, read.to(written.device)).to(read.device)
    return top_t(read, torch.where(reused, scores * written_weight, scores), t)


def selector_score_stats(scores: Tensor) -> dict[str, float]:
    """min / mean / max (and count) of the selected rows' scores; one host sync."""
    n = int(scores.numel())
    if n == 0:
        return {"n": 0.0, "min": math.nan, "mean": math.nan, "max": math.nan}
    s = scores.detach().double()
    lo, mean, hi = torch.stack([s.min(), s.mean(), s.max()]).tolist()
    return {"n": float(n), "min": lo, "mean": mean, "max": hi}
