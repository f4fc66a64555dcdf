"""LoRA through peft: low-rank adapters on the attention and MLP projections."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft import LoraConfig, get_peft_model

from smfexp.methods.base import FinetuneModule

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRAFinetune(FinetuneModule):
    method_name = "lora"

    def __init__(self, *args: Any, rank: int = 16, alpha: int = 32, dropout: float = 0.05,
                 target_modules: Sequence[str] = DEFAULT_TARGETS, **kwargs: Any) -> None:
        if rank <= 0:
            raise ValueError(f"method.rank must be > 0 (got {rank})")
        self.lora_config = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=dropout,
            target_modules=list(target_modules), task_type="CAUSAL_LM", bias="none",
        )
        super().__init__(*args, **kwargs)

    def prepare_model(self) -> None:
        self.model = get_peft_model(self.model, self.lora_config)

    def save_trained(self, directory: Path) -> Path:
        target = Path(directory) / "lora_adapter"
        self.model.save_pretrained(target, safe_serialization=True)
        return target
