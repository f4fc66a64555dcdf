"""DDP that leaves alone models which synchronise their own (sparse) gradients.

SMF's value tables get sparse gradients, which DDP's dense buckets cannot hold, and SMF
only needs the *selected* rows averaged across ranks - it does that itself, after
all-reducing the access counts so every rank selects the same rows. A module marks such
parameters in ``_ddp_params_and_buffers_to_ignore``; when nothing else trains, wrapping it
in ``DistributedDataParallel`` would fail ("no parameter that requires a gradient"), so the
module runs unwrapped while everything else (process group, samplers, collectives) is DDP's.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DDPStrategy
from torch.nn import Module


class SparseAwareDDPStrategy(DDPStrategy):
    strategy_name = "ddp_sparse_aware"

    def _setup_model(self, model: Module) -> Any:
        ignored = set(getattr(model, "_ddp_params_and_buffers_to_ignore", ()))
        dense = [n for n, p in model.named_parameters() if p.requires_grad and n not in ignored]
        if not dense:
            return model
        return super()._setup_model(model)
