"""Skip the steps of facts already learned (``method.learned_loss``), for every method.

A fact's later steps often start with its answer already recalled (a second step starts
below loss 0.5 in a quarter to a third of cases): the step then only moves weights that
other text reads. A step whose loss is below ``learned_loss`` is not taken - no backward,
nothing changes - while the step count and the lr schedule run on, so a run that skips sees
the same facts at the same steps as one that does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.distributed as dist
from torch import Tensor

from smfexp.utils.configs import require_number
from smfexp.utils.distributed import distributed


def check_learned_loss(args: Mapping[str, Any]) -> None:
    """One-line error for an impossible ``method.learned_loss`` (null = off)."""
    value = args.get("learned_loss")
    if value is None:
        return
    require_number(value, "method.learned_loss")
    if value <= 0:
        raise ValueError(f"method.learned_loss={value}: a loss, > 0 (null = every step is taken)")


def already_learned(loss: Tensor, learned_loss: float | None) -> bool:
    """Is this micro-batch's loss below ``learned_loss``? The loss is averaged over data
    parallel ranks first, so every rank decides alike (all skip or none do)."""
    if learned_loss is None:
        return False
    loss = loss.detach()
    if distributed():
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= dist.get_world_size()
    return float(loss) < learned_loss
