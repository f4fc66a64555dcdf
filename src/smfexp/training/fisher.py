"""The diagonal Fisher of the base model on background text, for EWC (``method.ewc``).

Why: EWC pulls each weight back toward its base value in proportion to how much general
text's likelihood depends on it. The diagonal of the empirical Fisher - the mean over
background sequences of the squared gradient of that sequence's log-likelihood - measures
exactly that, one number per weight. One sequence per backward pass (per-sequence gradients:
a batch's gradient would average the sequences' gradients before squaring), on the base model
before training, dropout off. Normalised to mean 1 over all weights, so that ``method.ewc`` is
on ``method.l2_to_base``'s scale (an all-ones Fisher is L2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from smfexp.training.loss import causal_lm_loss


def diagonal_fisher(model: nn.Module, params: Mapping[str, nn.Parameter],
                    sequences: Iterable[dict[str, Tensor]],
                    device: torch.device | str) -> dict[str, Tensor]:
    """Per weight of ``params`` (which require grad), the mean squared per-sequence gradient
    of the mean next-token loss over ``sequences`` (batches of one), normalised to mean 1.
    Leaves no gradient behind."""
    sums = {n: torch.zeros_like(p, dtype=torch.float32, device=device)
            for n, p in params.items()}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in sequences:
            model.zero_grad(set_to_none=True)
            loss = causal_lm_loss(model, {k: v.to(device) for k, v in batch.items()})
            loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += p.grad.float().pow(2)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise ValueError("method.ewc: no background sequence to take the Fisher on")
    total = sum(float(s.sum(dtype=torch.float64)) for s in sums.values())
    numel = sum(s.numel() for s in sums.values())
    mean = total / count / numel
    if mean <= 0:
        raise ValueError("method.ewc: the Fisher is zero (no weight affects the loss)")
    return {n: s.div_(count * mean) for n, s in sums.items()}
