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


def save_memory(
    model: nn.Module,
    directory: str | os.PathLike,
    rows: list[torch.Tensor] | None = None,
    untouched_from: str | None = None,
) -> Path:
    """Write the memory weights and config into ``directory`` (each file atomically).

    ``rows`` (one bool mask or index tensor per memory layer): store only those rows of each
    value table - what sparse finetuning changed - and every other parameter whole. The other
    rows come back from ``untouched_from`` on load: ``"zero"`` (an empty memory: the artifact
    is self-contained) or the directory of the checkpoint finetuning started from. A 262K-slot
    memory is 1.8 GB of values; the rows a fact stream writes are a few MB.
    """
    cfg = memory_config(model)
    if cfg is None or not memory_blocks(model):
        raise ValueError("save_memory: the model has no memory attached")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = _describe(model, cfg)
    state = {k: v.detach().contiguous().cpu() for k, v in _memory_state(model).items()}
    if rows is not None:
        if untouched_from is None:
            raise ValueError("save_memory(rows=...) needs untouched_from ('zero' or a directory)")
        for block, selected in zip(memory_blocks(model), rows, strict=True):
            key = f"layers.{block.layer_idx}.memory.values"
            index = selected.nonzero().squeeze(1) if selected.dtype == torch.bool else selected
            index = index.detach().cpu().long()
            state[f"{key}.rows"] = index.contiguous()
            state[f"{key}.data"] = state.pop(key).index_select(0, index).contiguous()
        meta["values"] = {"stored": "rows", "untouched_from": str(untouched_from)}
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
    sparse = (meta.get("values") or {}).get("stored") == "rows"
    if sparse:
        untouched = meta["values"]["untouched_from"]
        if untouched == "zero":
            with torch.no_grad():
                for block in memory_blocks(model):
                    block.memory.values.zero_()
        elif not (Path(untouched) / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"this memory checkpoint stores only the rows finetuning changed; the others come "
                f"from {untouched}, which no longer exists - rebuild it with the run's retrofit "
                f"config (python -m smfexp.retrofit ...), then load again")
        else:
            load_memory(model, untouched)
        params = {k: v for k, v in params.items() if not k.endswith(".memory.values")}
    weights = Path(directory) / WEIGHTS_NAME
    with safe_open(str(weights), framework="pt") as fh:
        saved_keys = set(fh.keys())
        if sparse:
            values_of = {b.layer_idx: b.memory.values for b in memory_blocks(model)}
            row_keys = {f"layers.{i}.memory.values.{part}" for i in values_of
                        for part in ("rows", "data")}
            if not row_keys <= saved_keys:
                lacking = sorted(row_keys - saved_keys)[:2]
                raise ValueError(f"memory checkpoint lacks value rows {lacking}")
            with torch.no_grad():
                for i, values in values_of.items():
                    index = fh.get_tensor(f"layers.{i}.memory.values.rows")
                    data = fh.get_tensor(f"layers.{i}.memory.values.data")
                    if index.numel() and (int(index.max()) >= values.shape[0] or
                                          data.shape != (index.numel(), values.shape[1])):
                        raise ValueError(f"memory checkpoint value rows of layer {i} do not fit "
                                         f"a {tuple(values.shape)} table")
                    values.index_copy_(0, index, data.to(values.dtype))
            saved_keys -= row_keys
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
