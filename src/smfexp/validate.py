"""Cheap checks of a composed config, run before any model or dataset is loaded.

A typo or an impossible value should cost one second and one line, not a model load.
Each entry point (train, retrofit, evaluate) has one ``validate_*_config``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from smfexp.data.sources import BACKGROUND_PARTS, DataUnavailableError, resolve_data_dir
from smfexp.eval import EvalConfig
from smfexp.memory import MemoryConfig
from smfexp.models.loading import ModelSpec
from smfexp.utils.net import hub_reachable


def model_depth(model_cfg: Any) -> int | None:
    """Number of decoder blocks, when it is known without loading weights."""
    spec = ModelSpec.from_config(model_cfg)
    if spec.source == "tiny":
        return int(spec.tiny.get("num_hidden_layers", 4))
    if spec.source == "embedded":
        from smfexp.models.loading import _embedded_gguf, embedded_key
        from smfexp.stages.cache import entry_dir

        try:
            gguf = _embedded_gguf(spec)
        except Exception:
            return None
        config = entry_dir("models", embedded_key(gguf), spec.name) / "config.json"
    elif spec.source == "local" and spec.path:
        config = Path(spec.path).expanduser() / "config.json"
    else:
        return None
    try:
        return int(json.loads(config.read_text())["num_hidden_layers"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _positive(value: Any, name: str, allow_zero: bool = False) -> None:
    """Raise naming ``name`` unless ``value`` is None or a finite number > 0 (>= 0)."""
    if value is None:
        return
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number {bound} (got {value!r})")
    if not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be {bound} (got {value})")


def _choice(value: Any, name: str, valid: tuple[str, ...] | list[str]) -> None:
    if value is not None and value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}")


def _check_memory(cfg: DictConfig) -> None:
    """Memory sizes and layer indices against the model's depth (when known cheaply)."""
    memory = MemoryConfig.from_config(OmegaConf.to_container(cfg.memory, resolve=True))
    depth = model_depth(cfg.model)
    memory.validate(depth if depth is not None else 10**6)


def _check_retrofit(retro: Any) -> None:
    for key in ("lr", "batch_size", "max_length", "grad_accum", "heldout_batches",
                "calibration_batches"):
        _positive(retro.get(key), f"retrofit.{key}")
    for key in ("steps", "warmup_steps", "weight_decay", "heldout_docs"):
        _positive(retro.get(key), f"retrofit.{key}", allow_zero=True)
    _positive(retro.get("max_docs"), "retrofit.max_docs")
    parts = retro.get("parts")
    if parts is not None:
        unknown = sorted(set(parts) - set(BACKGROUND_PARTS))
        if unknown or not parts:
            raise ValueError(
                f"retrofit.parts has unknown or no parts {unknown}; valid: {list(BACKGROUND_PARTS)}"
            )


def _check_data(data: Any) -> None:
    """The dataset knobs whose bad values would otherwise fail after the model loads."""
    from smfexp.data.collate import LOSS_ON, OVERLONG

    _choice(data.get("overlong"), "data.overlong", OVERLONG)
    _choice(data.get("loss_on"), "data.loss_on", LOSS_ON)
    _positive(data.get("max_length"), "data.max_length")
    _positive(data.get("batch_size"), "data.batch_size")
    fraction = data.get("max_bad_fraction")
    _positive(fraction, "data.max_bad_fraction", allow_zero=True)
    if fraction is not None and fraction > 1:
        raise ValueError(f"data.max_bad_fraction must be in [0, 1] (got {fraction})")


def _check_data_dir(configured: Any, key: str) -> None:
    """A configured folder must exist; no folder at all needs the hub."""
    if resolve_data_dir(configured, key) is None and not hub_reachable():
        raise DataUnavailableError(
            f"no offline data directory (set {key}=... or $SMFEXP_DATA_DIR, or run "
            "`make setup` to link ../shared/data) and the Hugging Face hub is unreachable"
        )


def validate_train_config(cfg: DictConfig) -> None:
    """Raise ValueError / DataUnavailableError with one line naming the key to change."""
    ModelSpec.from_config(cfg.model)
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
    _check_data(cfg.data)
    if method.get("name") == "smf":
        from smfexp.smf.selectors import SELECTORS

        _choice(cfg.selector.name, "selector", list(SELECTORS))
        _positive(cfg.selector.get("top_t"), "selector.top_t")
        _check_memory(cfg)
        _check_retrofit(cfg.retrofit)
        background = method.get("background") or {}
        for key in ("batch_size", "max_length", "n"):
            _positive(background.get(key), f"method.background.{key}")
        from smfexp.smf.background import UNITS

        _choice(background.get("unit"), "method.background.unit", UNITS)
    _check_data_dir(cfg.paths.get("data_dir"), "paths.data_dir")


def validate_retrofit_config(cfg: DictConfig) -> None:
    """``python -m smfexp.retrofit``: memory, budget and data, before the model loads."""
    ModelSpec.from_config(cfg.model)
    _check_memory(cfg)
    _check_retrofit(cfg.retrofit)
    _check_data_dir(cfg.paths.get("data_dir"), "paths.data_dir")


def validate_evaluate_config(cfg: DictConfig) -> EvalConfig:
    """``python -m smfexp.evaluate``: eval settings, data and checkpoint; returns the EvalConfig."""
    ModelSpec.from_config(cfg.model)
    ecfg = EvalConfig.from_config(cfg.eval)
    checkpoint = cfg.get("checkpoint")
    if checkpoint and not Path(str(checkpoint)).expanduser().exists():
        raise FileNotFoundError(f"checkpoint={str(checkpoint)!r} does not exist")
    if not str(cfg.get("output") or "").strip():
        raise ValueError("output must name the file to write (e.g. output=eval.json)")
    _check_data_dir(ecfg.data_dir, "eval.data_dir")
    return ecfg
