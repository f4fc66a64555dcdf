"""Save and load only the memory parameters (+ gates): small, safetensors, atomic.

``memory.safetensors`` is self-describing: its metadata carries the memory config, the
resolved layer indices and the hidden size, so the weights and the config can never be out
of sync. ``memory_config.json`` beside it is the same information for humans and tools.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from smfexp.memory.attach import (
    MemoryConfig,
    attach_memory,
    decoder_blocks,
    memory_blocks,
    memory_config,
    model_hidden_size,
)
from smfexp.utils.io import atomic_file, atomic_write_json

WEIGHTS_NAME = "memory.safetensors"
CONFIG_NAME = "memory_config.json"
FORMAT_VERSION = 1


def _memory_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``layers.{i}.memory.*`` and ``layers.{i}.gate`` tensors, never the wrapped MLP."""
    state: dict[str, torch.Tensor] = {}
    for block in memory_blocks(model):
        for name, tensor in block.memory.state_dict().items():
            state[f"layers.{block.layer_idx}.memory.{name}"] = tensor
        if block.gate is not None:
            state[f"layers.{block.layer_idx}.gate"] = block.gate.detach()
    return state


def _describe(model: nn.Module, cfg: MemoryConfig) -> dict[str, Any]:
    blocks = memory_blocks(model)
    hf_config = getattr(model, "config", None)
    return {
        "format_version": FORMAT_VERSION,
        "memory": cfg.to_dict(),
        "layer_indices": [b.layer_idx for b in blocks],
        "hidden_size": blocks[0].memory.hidden_size,
        "v_dim": blocks[0].memory.v_dim,
        "n_blocks": len(decoder_blocks(model)),
        "base_model": getattr(hf_config, "_name_or_path", None) or None,
        "model_type": getattr(hf_config, "model_type", None),
    }


def save_memory(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the memory weights and config into ``directory`` (each file atomically)."""
    cfg = memory_config(model)
    if cfg is None or not memory_blocks(model):
        raise ValueError("save_memory: the model has no memory attached")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = _describe(model, cfg)
    state = {k: v.detach().contiguous().cpu() for k, v in _memory_state(model).items()}
    with atomic_file(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"smfexp_memory": json.dumps(meta, sort_keys=True)})
    atomic_write_json(directory / CONFIG_NAME, meta)
    return directory


def read_memory_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's description (from the safetensors metadata, else the JSON)."""
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    with safe_open(str(weights), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("smfexp_memory")
    if raw is not None:
        return json.loads(raw)
    return json.loads((directory / CONFIG_NAME).read_text())


def _check_compatible(model: nn.Module, meta: dict[str, Any]) -> None:
    """Raise ValueError naming the first field where checkpoint and model disagree."""
    saved = MemoryConfig.from_config(meta["memory"])
    current = memory_config(model)
    blocks = memory_blocks(model)
    assert current is not None and blocks
    pairs = {
        "hidden_size": (meta["hidden_size"], blocks[0].memory.hidden_size),
        "layer_indices": (meta["layer_indices"], [b.layer_idx for b in blocks]),
        "v_dim": (meta["v_dim"], blocks[0].memory.v_dim),
        "n_blocks": (meta["n_blocks"], len(decoder_blocks(model))),
    }
    for name in ("n_keys", "heads", "knn", "k_dim", "mode", "query_norm"):
        pairs[name] = (getattr(saved, name), getattr(current, name))
    for name, (want, have) in pairs.items():
        if want != have:
            raise ValueError(
                f"memory checkpoint does not fit this model: {name} is {want!r} in the "
                f"checkpoint but {have!r} in the model"
            )


def load_memory(model: nn.Module, directory: str | os.PathLike) -> list[nn.Module]:
    """Load saved memories into ``model`` (attaching them first if needed); bit-exact."""
    meta = read_memory_meta(directory)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported memory checkpoint format {meta.get('format_version')!r}")
    if memory_config(model) is None:
        cfg = MemoryConfig.from_config(meta["memory"])
        if meta["hidden_size"] != (h := model_hidden_size(model)):
            raise ValueError(
                f"memory checkpoint does not fit this model: hidden_size is "
                f"{meta['hidden_size']!r} in the checkpoint but {h!r} in the model"
            )
        # Pin the saved absolute indices so a different depth cannot silently move them.
        cfg.layers = list(meta["layer_indices"])
        attach_memory(model, cfg)
    _check_compatible(model, meta)

    params = {}
    for block in memory_blocks(model):
        for name, p in block.memory.state_dict(keep_vars=True).items():
            params[f"layers.{block.layer_idx}.memory.{name}"] = p
        if block.gate is not None:
            params[f"layers.{block.layer_idx}.gate"] = block.gate
    weights = Path(directory) / WEIGHTS_NAME
    with safe_open(str(weights), framework="pt") as fh:
        saved_keys = set(fh.keys())
        missing, unexpected = sorted(set(params) - saved_keys), sorted(saved_keys - set(params))
        if missing or unexpected:
            raise ValueError(
                f"memory checkpoint tensors do not match: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, p in params.items():
                t = fh.get_tensor(name)
                if t.shape != p.shape:
                    raise ValueError(
                        f"memory checkpoint tensor {name} has shape {tuple(t.shape)}, "
                        f"the model expects {tuple(p.shape)}"
                    )
                p.copy_(t)
    return memory_blocks(model)
