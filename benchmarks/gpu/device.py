"""What the step and throughput measurements share on the device: synchronised timing,
freeing memory between cases, randomly initialised models of a published shape."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch

from .plan import ModelShape


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device synchronised at both ends, and its result."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def free_device_memory(device: str) -> int | None:
    """Collect garbage and reset the peak counter; returns what is still allocated."""
    gc.collect()
    if device != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def random_model(shape: ModelShape, device: str, **ids: int | None) -> Any:
    """A randomly initialised causal LM of ``shape``, built on ``device`` in float32."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}[shape.family]
    torch.manual_seed(0)
    with torch.device(device):  # weights are initialised where they run
        return cls(shape.config(**ids)).to(device=device, dtype=torch.float32)
