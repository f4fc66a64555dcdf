"""The training loss: next-token cross-entropy computed only where a label is scored.

SFT batches score a few tokens per row (MedMCQA: the answer letter; facts: the answer), but a
plain ``model(labels=...)`` projects every position onto the vocabulary: a [batch, seq, 49k]
logits tensor (plus its fp32 copy and gradient) and ~20% of a small model's FLOPs. Passing the
loss-bearing positions as ``logits_to_keep`` (a boolean mask, transformers >= 4.5x) gives the
same mean cross-entropy as the model's own loss at a fraction of the memory and time.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def loss_bearing_mask(labels: Tensor) -> Tensor:
    """Positions whose output is scored: logits[t] predicts labels[t + 1]."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


@cache
def _accepts_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def supports_logits_to_keep(model: nn.Module) -> bool:
    """True if the (possibly PEFT-wrapped) causal LM can slice its logits by position."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _accepts_logits_to_keep(type(base))


def causal_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean next-token cross-entropy over the labelled tokens (HF's causal-LM loss)."""
    labels = batch["labels"]
    if not supports_logits_to_keep(model):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=labels).loss
    keep = loss_bearing_mask(labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits  # [n_scored, vocab]
    targets = labels[:, 1:][keep[:, :-1]]
    return F.cross_entropy(logits.float(), targets)
