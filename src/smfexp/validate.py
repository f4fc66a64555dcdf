"""Cheap checks of a composed config, run before any model or dataset is loaded.

A typo or an impossible value should cost one second and one line, not a model load.
"""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from smfexp.data.sources import DataUnavailableError, hub_reachable, resolve_data_dir
from smfexp.eval import EvalConfig
from smfexp.memory import MemoryConfig
from smfexp.models.loading import ModelSpec


def model_depth(model_cfg: Any) -> int | None:
    """Number of decoder blocks, when it is known without loading weights."""
    spec = ModelSpec.from_config(model_cfg)
    if spec.source == "tiny":
        return int(spec.tiny.get("num_hidden_layers", 4))
    if spec.source == "embedded":
        from smfexp.models.loading import _embedded_gguf
        from smfexp.utils.io import cache_root

        try:
            size = _embedded_gguf(spec).stat().st_size
        except Exception:
            return None
        config = cache_root() / "models" / f"{spec.name}-{size}" / "config.json"
    elif spec.source == "local" and spec.path:
        from pathlib import Path

        config = Path(spec.path).expanduser() / "config.json"
    else:
        return None
    try:
        return int(json.loads(config.read_text())["num_hidden_layers"])
    except (OSError, KeyError, ValueError):
        return None


def _positive(value: Any, name: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} (got {value})")


def validate_train_config(cfg: DictConfig) -> None:
    """Raise ValueError / DataUnavailableError with one line naming the key to change."""
    method = cfg.method
    _positive(method.get("lr"), "method.lr")
    _positive(method.get("batch_size"), "method.batch_size")
    _positive(method.get("grad_accum"), "method.grad_accum")
    _positive(method.get("epochs"), "method.epochs", allow_zero=True)
    _positive(method.get("warmup_steps"), "method.warmup_steps", allow_zero=True)
    max_steps = cfg.trainer.get("max_steps", -1)
    if max_steps is not None and max_steps != -1:
        _positive(max_steps, "trainer.max_steps")
    EvalConfig.from_config(cfg.eval)
    if method.get("name") == "smf":
        from smfexp.smf.selectors import SELECTORS

        if cfg.selector.name not in SELECTORS:
            raise ValueError(f"selector={cfg.selector.name!r}; valid: {sorted(SELECTORS)}")
        _positive(cfg.selector.get("top_t"), "selector.top_t")
        memory = MemoryConfig.from_config(OmegaConf.to_container(cfg.memory, resolve=True))
        depth = model_depth(cfg.model)
        memory.validate(depth if depth is not None else 10**6)
        _positive(cfg.retrofit.get("steps"), "retrofit.steps")
        _positive(cfg.retrofit.get("lr"), "retrofit.lr")
    data_dir = resolve_data_dir(cfg.paths.get("data_dir"))
    if data_dir is None and not hub_reachable():
        raise DataUnavailableError(
            "no offline data directory (set paths.data_dir=... or $SMFEXP_DATA_DIR, or run "
            "`make setup` to link ../shared/data) and the Hugging Face hub is unreachable"
        )
