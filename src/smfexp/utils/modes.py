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


@contextlib.contextmanager
def adapters_merged(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """A peft model's adapters folded into their base weights for the block (for scoring).

    Why: unmerged, every adapted projection adds two small matmuls, a dropout call and an add
    to each forward - a LoRA scoring pass took ~1.5x the merged one (BENCHMARKS.md). The
    base weights are copied back bit for bit afterwards, not unmerged (W + BA - BA rounds
    differently from W), so training goes on from exactly the weights it left. Models
    without unmerged adapters pass through untouched.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.merged]
    merge = getattr(model, "merge_adapter", None)
    if not layers or not callable(merge):
        yield model
        return
    with torch.no_grad():
        saved = [layer.get_base_layer().weight.detach().clone() for layer in layers]
        merge()
    try:
        yield model
    finally:
        with torch.no_grad():
            model.unmerge_adapter()
            for layer, weight in zip(layers, saved, strict=True):
                layer.get_base_layer().weight.copy_(weight)
