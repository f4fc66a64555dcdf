"""Whether this process is one of several data-parallel ranks (decisions must then agree)."""

from __future__ import annotations

import torch.distributed as dist


def distributed() -> bool:
    """True under a process group of more than one rank (DDP), False on one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
