"""A model's train/eval mode, set for a block and restored after it, also on an error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model.eval()`` for the block; the caller's mode comes back afterwards.

    Only the mode: no ``inference_mode`` (see ``smfexp.eval.encode.scoring_mode`` for that),
    for blocks whose tensors outlive it or whose callees set their own grad mode.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
