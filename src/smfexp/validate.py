"""Cheap checks of a composed config, run before any model or dataset is loaded.

A typo or an impossible value should cost one second and one line, not a model load.
Each entry point (train, retrofit, evaluate) has one ``validate_*_config``.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from smfexp.data.sources import BACKGROUND_PARTS, DataUnavailableError, resolve_data_dir
from smfexp.eval import EvalConfig
from smfexp.memory import MemoryConfig
from smfexp.models.loading import ModelSpec
from smfexp.tasks import check_probes
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


def constructor_args(cls: type) -> list[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up to the base that
    takes none (e.g. SparseMemoryFinetune -> FinetuneModule); model/tokenizer excluded."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in ("self", "model", "tokenizer") and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


# Settings read from the retrofit / background groups (smfexp.stages.retrofit and
# smfexp.stages.background read them as plain mappings, so no class lists them).
RETROFIT_KEYS = ("steps", "lr", "batch_size", "grad_accum", "max_length", "warmup_steps",
                 "weight_decay", "parts", "max_docs", "heldout_docs", "heldout_batches",
                 "calibration_batches", "seed", "precision")
BACKGROUND_KEYS = ("unit", "n", "max_length", "batch_size", "parts", "seed")


def _check_keys(node: Any, group: str, valid: list[str] | tuple[str, ...], owner: str) -> None:
    """Every key of ``node`` must be one ``owner`` reads: anything else is a typo (or a key
    of another option of the group) that would be ignored or fail after the model loads."""
    for key in node or {}:
        if str(key).startswith("_") or key in valid:
            continue
        raise ValueError(f"{group}.{key} is not {owner}; valid: {', '.join(sorted(valid))}")


def _import_target(node: Any, group: str) -> type:
    """The class a group's ``_target_`` names (one line when it cannot be imported)."""
    import hydra

    target = node.get("_target_")
    try:
        return hydra.utils.get_class(str(target))
    except Exception as err:
        raise ValueError(f"{group}._target_={target!r} cannot be imported ({err})") from None


def check_group_keys(cfg: DictConfig, groups: tuple[str, ...]) -> None:
    """Unknown keys of the class-backed groups (``data``, ``memory``, ``retrofit``,
    ``background``, ``eval``) present in ``cfg``, each against what reads it."""
    if "data" in groups and cfg.get("data") is not None:
        cls = _import_target(cfg.data, "data")
        _check_keys(cfg.data, "data", constructor_args(cls), f"an argument of {cls.__name__}")
    fields = {"memory": MemoryConfig.__dataclass_fields__, "eval": EvalConfig.__dataclass_fields__}
    owners = {"memory": "a field of MemoryConfig", "eval": "a field of EvalConfig"}
    for group in ("memory", "eval"):
        if group in groups and cfg.get(group) is not None:
            _check_keys(cfg[group], group, list(fields[group]), owners[group])
    if "retrofit" in groups and cfg.get("retrofit") is not None:
        _check_keys(cfg.retrofit, "retrofit", RETROFIT_KEYS, "a retrofit setting")
    if "background" in groups and cfg.get("background") is not None:
        _check_keys(cfg.background, "background", BACKGROUND_KEYS, "a background setting")


def _check_method(cfg: DictConfig) -> type:
    """A method config is exactly its class's constructor arguments: a key it does not take
    is a typo (or a setting of another method), said in one line with the valid keys."""
    cls = _import_target(cfg.method, "method")
    valid = constructor_args(cls)
    for key in cfg.method:
        if key == "_target_" or key in valid:
            continue
        if key == "selector":
            raise ValueError(f"selector=/method.selector applies to method=smf only; "
                             f"{cls.__name__} has no selector")
        raise ValueError(f"method.{key} is not an argument of {cls.__name__}; "
                         f"valid: {', '.join(sorted(valid))}")
    return cls


TRAIN_GROUPS = ("data", "memory", "retrofit", "background", "eval")


def validate_train_config(cfg: DictConfig) -> None:
    """Raise ValueError / DataUnavailableError with one line naming the key to change."""
    ModelSpec.from_config(cfg.model)
    cls = _check_method(cfg)
    check_group_keys(cfg, TRAIN_GROUPS)
    method = cfg.method
    _positive(method.get("lr"), "method.lr")
    _positive(method.get("grad_accum"), "method.grad_accum")
    _positive(method.get("warmup_steps"), "method.warmup_steps", allow_zero=True)
    _positive(cfg.data.get("epochs"), "data.epochs", allow_zero=True)
    max_steps = cfg.trainer.get("max_steps", -1)
    if max_steps is not None and max_steps != -1:
        _positive(max_steps, "trainer.max_steps")
    ecfg = check_probes(EvalConfig.from_config(cfg.eval))
    _check_data(cfg.data)
    if "selector" in method:
        from smfexp.smf.selectors import SELECTORS

        _choice(method.selector, "method.selector", list(SELECTORS))
        _positive(method.get("top_t"), "method.top_t")
    if getattr(cls, "uses_memory", False):
        _check_memory(cfg)
        _check_retrofit(cfg.retrofit)
        background = cfg.get("background") or {}
        for key in ("batch_size", "max_length", "n"):
            _positive(background.get(key), f"background.{key}")
        from smfexp.smf.background import UNITS

        _choice(background.get("unit"), "background.unit", UNITS)
    _check_data_dir(cfg.paths.get("data_dir"), "paths.data_dir")
    if ecfg.data_dir != cfg.paths.get("data_dir"):  # set apart from paths.data_dir: check it too
        _check_data_dir(ecfg.data_dir, "eval.data_dir")


def validate_retrofit_config(cfg: DictConfig) -> None:
    """``python -m smfexp.retrofit``: memory, budget and data, before the model loads."""
    ModelSpec.from_config(cfg.model)
    check_group_keys(cfg, ("memory", "retrofit"))
    _check_memory(cfg)
    _check_retrofit(cfg.retrofit)
    _check_data_dir(cfg.paths.get("data_dir"), "paths.data_dir")


def validate_evaluate_config(cfg: DictConfig) -> EvalConfig:
    """``python -m smfexp.evaluate``: eval settings, data and checkpoint; returns the EvalConfig."""
    ModelSpec.from_config(cfg.model)
    check_group_keys(cfg, ("eval",))
    ecfg = check_probes(EvalConfig.from_config(cfg.eval))
    checkpoint = cfg.get("checkpoint")
    if checkpoint and not Path(str(checkpoint)).expanduser().exists():
        raise FileNotFoundError(f"checkpoint={str(checkpoint)!r} does not exist")
    if not str(cfg.get("output") or "").strip():
        raise ValueError("output must name the file to write (e.g. output=eval.json)")
    _check_data_dir(ecfg.data_dir, "eval.data_dir")
    return ecfg
