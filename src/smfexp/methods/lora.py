"""LoRA through peft: low-rank adapters on the attention and MLP projections (replay of
background text beside each batch: ``method.replay_k``, :class:`DenseReplayFinetune`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from smfexp.methods.replay import DenseReplayFinetune
from smfexp.utils.configs import require_int

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# What other decoder families call the Llama-style projections, so that one target list
# (conf/method/lora.yaml) means "attention and MLP projections" on any of them: Phi-3 fuses
# qkv_proj / gate_up_proj, GPT-2 has c_attn / c_proj / c_fc, GPT-NeoX, Falcon and Bloom
# query_key_value / dense / dense_h_to_4h / dense_4h_to_h. An alias is used only when the
# model has no layer of the requested name.
TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    "q_proj": ("qkv_proj", "c_attn", "query_key_value", "Wqkv"),
    "k_proj": ("qkv_proj", "c_attn", "query_key_value", "Wqkv"),
    "v_proj": ("qkv_proj", "c_attn", "query_key_value", "Wqkv"),
    "o_proj": ("c_proj", "dense", "out_proj"),
    "gate_proj": ("gate_up_proj", "c_fc", "dense_h_to_4h", "fc1", "w1"),
    "up_proj": ("gate_up_proj", "c_fc", "dense_h_to_4h", "fc1", "w3"),
    "down_proj": ("c_proj", "dense_4h_to_h", "fc2", "w2"),
}


def adaptable_layer_names(model: nn.Module) -> set[str]:
    """Last name components of the layers LoRA can wrap (Linear, GPT-2's Conv1D), no head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, nn.Linear | Conv1D) and module is not head and name}


def resolve_target_modules(model: nn.Module, requested: Sequence[str]) -> list[str]:
    """``requested`` layer names as this model spells them (see ``TARGET_ALIASES``).

    Names the model has are kept; a missing one becomes its first alias the model has; one
    with neither is dropped (logged). Nothing left is a one-line error listing the layers.
    """
    present = adaptable_layer_names(model)
    resolved: list[str] = []
    dropped = []
    for name in requested:
        found = name if name in present else next(
            (a for a in TARGET_ALIASES.get(name, ()) if a in present), None)
        if found is None:
            dropped.append(name)
        elif found not in resolved:
            resolved.append(found)
    if not resolved:
        raise ValueError(
            f"method.target_modules {list(requested)} match no layer of "
            f"{type(model).__name__}; its linear layers are named: {', '.join(sorted(present))}"
        )
    if dropped:
        log.info("lora: %s has no layer for %s; adapting %s", type(model).__name__, dropped,
                 resolved)
    return resolved


class LoRAFinetune(DenseReplayFinetune):
    method_name = "lora"

    @classmethod
    def check_arguments(cls, args: Mapping[str, Any]) -> None:
        """One-line errors for impossible arguments, before any model loads."""
        super().check_arguments(args)
        if "rank" in args:
            require_int(args["rank"], "method.rank")

    def __init__(self, *args: Any, rank: int = 16, alpha: int = 32, dropout: float = 0.05,
                 target_modules: Sequence[str] = DEFAULT_TARGETS, **kwargs: Any) -> None:
        self.check_arguments({"rank": rank})
        self.requested_targets = list(target_modules)
        self.lora_config = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=dropout,
            target_modules=self.requested_targets, task_type="CAUSAL_LM", bias="none",
        )
        super().__init__(*args, **kwargs)

    def prepare_model(self) -> None:
        self.lora_config.target_modules = set(
            resolve_target_modules(self.model, self.requested_targets))
        self.model = get_peft_model(self.model, self.lora_config)

    def save_trained(self, directory: Path) -> Path:
        target = Path(directory) / "lora_adapter"
        self.model.save_pretrained(target, safe_serialization=True)
        return target
