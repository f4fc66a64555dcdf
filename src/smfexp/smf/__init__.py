"""Sparse Memory Finetuning, the algorithm: plain tensors in, plain tensors out.

Read in this order (one optimizer step of ``methods/smf.py`` uses them in it):

1. ``counting``      how often the step's real tokens read each memory slot;
2. ``background``    the same counts over general text (df, reads, N), once per memory;
3. ``selectors``     tfidf / kl / tf / random / all: the top-t rows of a step, per layer;
4. ``sparse_optim``  SGD / Adam that change exactly the selected rows (the rest stay
                     bit-identical), with optimizer state only for rows ever selected;
5. ``diagnostics``   how specific the selected rows are (overlap, background share).

Nothing here imports the data, methods or eval packages; caching and the forward passes
that feed these functions live in ``smfexp.stages``.
"""

from smfexp.smf.background import BackgroundStats, LayerBackground, compute_background_stats
from smfexp.smf.counting import AccessCounter
from smfexp.smf.selectors import NEEDS_BACKGROUND, SELECTORS, Selection, select
from smfexp.smf.sparse_optim import RowSparseAdam, RowSparseSGD, clip_grad_norm_

__all__ = [
    "NEEDS_BACKGROUND",
    "SELECTORS",
    "AccessCounter",
    "BackgroundStats",
    "LayerBackground",
    "RowSparseAdam",
    "RowSparseSGD",
    "Selection",
    "clip_grad_norm_",
    "compute_background_stats",
    "select",
]
