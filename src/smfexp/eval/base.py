"""Pieces every task module shares: the probe definition and result types, held-out slicing,
prompt wrapping."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smfexp.data.sources import Rows, resolve_data_dir
from smfexp.eval.config import EvalConfig
from smfexp.eval.encode import Encoder, chat_prompt, resolve_max_length
from smfexp.eval.paired import Items

log = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    """Aggregate metrics plus per-example details (predictions, log-likelihoods)."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)
    # per-item totals of each metric (``smfexp.eval.paired``): what a paired interval of the
    # metric's change after vs before training resamples
    items: dict[str, Items] = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """One benchmark: how to load its held-out rows, score them, and which metric leads."""

    name: str
    load: Callable[[EvalConfig], Rows]
    score: Callable[[Any, Any, list[dict[str, Any]], EvalConfig], ProbeResult]
    primary: dict[str, tuple[str, bool]]  # protocol -> (metric, higher_is_better)
    doc: str = ""
    # rows that depend on the model before training (what it already knows): called once on
    # that model, the same rows are then scored before and after
    select: Callable[[Any, Any, list[dict[str, Any]], EvalConfig], list[dict[str, Any]]] | None \
        = None


def data_dir(cfg: EvalConfig) -> Path | None:
    """The offline data folder (or None for the hub); see ``smfexp.data.sources``."""
    return resolve_data_dir(cfg.data_dir)


def take(rows: Rows, cfg: EvalConfig, what: str, cap: int | None = None) -> Rows:
    """The first ``limit`` rows, never beyond ``cap`` (the held-out region of a shared file)."""
    n = len(rows.rows) if cap is None else min(cap, len(rows.rows))
    limit = cfg.limit_for(what)
    if limit is not None:
        if cap is not None and limit > cap:
            log.warning(
                "%s: limit=%d exceeds the %d held-out rows; using %d", what, limit, cap, cap
            )
        n = min(n, limit)
    meta = {**rows.meta, "rows": n, "held_out": cap}
    return Rows(rows.rows[:n], rows.source, rows.skipped, meta)


def encoder_for(model: Any, tokenizer: Any, cfg: EvalConfig) -> Encoder:
    return Encoder(tokenizer, resolve_max_length(model, tokenizer, cfg.max_length))


def wrap(tokenizer: Any, cfg: EvalConfig, prompt: str, system: str | None = None) -> str:
    """Plain: ``system + prompt`` (the harness' description prefix); chat: templated turns."""
    if cfg.chat_template:
        return chat_prompt(tokenizer, prompt, system)
    return (system or "") + prompt


def answer_delimiter(cfg: EvalConfig) -> str:
    """' ' before a scored answer in plain prompts; none after a chat assistant header (as the
    harness drops its target delimiter under a chat template)."""
    return "" if cfg.chat_template else " "


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def require_rows(rows: list[dict[str, Any]], name: str) -> None:
    if not rows:
        raise ValueError(f"probe {name!r}: no rows to score")
