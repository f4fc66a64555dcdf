"""Config nodes into typed config dataclasses: the one conversion every group goes through.

A composed Hydra config is a tree of untyped nodes. Each group that has settings of its own
(``model``, ``memory``, ``retrofit``, ``background``, ``eval``) is a dataclass that checks its
values in ``__post_init__``; :func:`from_node` builds it from a node and refuses a key the
dataclass does not have, in one line naming the key and the valid ones, so a typo fails
before any model loads instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

T = TypeVar("T")


def plain(node: Any) -> Any:
    """A node as plain Python containers, interpolations resolved."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [plain(v) for v in node]
    return node


def unknown_key_error(group: str, key: str, valid: list[str] | tuple[str, ...],
                      owner: str) -> ValueError:
    """The one-line error for a key nothing reads."""
    return ValueError(f"{group}.{key} is not {owner}; valid: {', '.join(sorted(valid))}")


def from_node(cls: type[T], node: Any, group: str) -> T:
    """``cls(**node)``: a copy of an instance, the defaults for None, else the node's keys
    (``_target_`` and other ``_``-keys skipped) - an unknown key is a one-line error."""
    if isinstance(node, cls):
        return dataclasses.replace(node)  # type: ignore[type-var]
    if node is None:
        return cls()
    data = plain(node)
    if not isinstance(data, Mapping):
        raise ValueError(f"{group} must be a mapping of settings, got {type(data).__name__}")
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        if str(key).startswith("_"):
            continue
        if key not in fields:
            raise unknown_key_error(group, str(key), fields, f"a field of {cls.__name__}")
        kwargs[str(key)] = value
    return cls(**kwargs)


def require_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum`` (not a bool), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return value


def require_number(value: Any, name: str, allow_zero: bool = False) -> float:
    """``value`` if it is a finite number > 0 (>= 0), else a one-line error."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be a number {bound} (got {value!r})")
    return float(value)
