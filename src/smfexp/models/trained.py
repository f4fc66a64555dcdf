"""Put what a run trained back onto its base model: memory rows, a LoRA adapter, full weights.

``checkpoint`` may be a run directory, its ``trained/`` folder, or one artifact folder.
Only safetensors files are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _artifact(path: Path) -> tuple[str, Path]:
    if (path / "trained").is_dir():
        path = path / "trained"
    for kind, sub, marker in (
        ("memory", "memory", "memory.safetensors"),
        ("lora", "lora_adapter", "adapter_config.json"),
        ("full", "full", "config.json"),
    ):
        for candidate in (path / sub, path):
            if (candidate / marker).is_file():
                return kind, candidate
    raise FileNotFoundError(
        f"checkpoint={str(path)!r} holds no trained artifact: expected a run dir with trained/, "
        f"or a folder with memory.safetensors, adapter_config.json (LoRA) or config.json (full)"
    )


def load_trained(model: Any, checkpoint: str | Path) -> tuple[Any, str]:
    """Return ``(model with the checkpoint applied, kind)``; kind is memory | lora | full."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist")
    kind, directory = _artifact(path)
    if kind == "memory":
        from smfexp.memory import load_memory

        load_memory(model, directory)
        return model, kind
    if kind == "lora":
        from peft import PeftModel

        if not (directory / "adapter_model.safetensors").is_file():  # never a pickled .bin
            raise FileNotFoundError(f"{directory} has no adapter_model.safetensors")
        # merged: scoring runs the plain projections, ~1.5x faster than beside the adapters
        return PeftModel.from_pretrained(model, directory).merge_and_unload().eval(), kind
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    return full.eval(), kind
