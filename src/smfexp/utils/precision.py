"""Choose the compute precision: ``auto`` picks bf16 where the hardware makes it fast."""

from __future__ import annotations

from typing import Any

import torch


def resolve_precision(precision: Any, accelerator: str = "auto") -> Any:
    """``auto``: bf16-mixed on a GPU with bf16, float32 elsewhere; explicit values are kept."""
    if str(precision) != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() \
            and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"
