"""The benchmarks, one task = one module: its rows, split, prompts, scorer.

Each task module (:mod:`~smfexp.tasks.medmcqa`, :mod:`~smfexp.tasks.triviaqa`,
:mod:`~smfexp.tasks.wikitext`, :mod:`~smfexp.tasks.gsm8k`, :mod:`~smfexp.tasks.nq_open`,
:mod:`~smfexp.tasks.retention`) holds, for its benchmark: the row normaliser (the canonical row
schema), ``load_rows(data_dir, ...)`` (on the generic IO of :mod:`smfexp.data.sources`), its
split boundaries as module constants with the split functions, its prompts, its scorer and
its ``PROBE = Probe(...)``. The rows of a benchmark a DataModule also trains on (MedMCQA,
TriviaQA, NQ-open) are defined below, in :mod:`smfexp.data.benchmarks`, and imported here:
the data layer imports no task. The scoring machinery they share is :mod:`smfexp.eval`
(the open-answer QA scorer: :mod:`smfexp.eval.qa`).

This package holds the registry (:data:`PROBES`) and the entry points the CLI and the
forgetting callback call.

To add a benchmark:

1. write ``smfexp/tasks/<name>.py`` with those pieces, ending in ``PROBE = Probe(name=...,
   load=..., score=..., primary={"harness": (metric, higher_is_better), "paper": ...})``
   (``select=`` for rows that depend on the model before training);
2. add the module to :data:`TASKS` below. :func:`check_probes` validates the probe names of
   an ``EvalConfig`` against it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from smfexp.data.sources import Rows
from smfexp.eval.base import Probe, ProbeResult
from smfexp.eval.config import PROTOCOLS, EvalConfig
from smfexp.eval.encode import scoring_mode
from smfexp.tasks import gsm8k, medmcqa, nq_open, retention, triviaqa, wikitext

log = logging.getLogger(__name__)

TASKS = (medmcqa, triviaqa, wikitext, gsm8k, nq_open, retention)  # the registry, in order
PROBES: Mapping[str, Probe] = MappingProxyType({m.PROBE.name: m.PROBE for m in TASKS})


def check_probes(cfg: EvalConfig) -> EvalConfig:
    """Raise one line listing the valid probes unless every probe ``cfg`` names (``probes``,
    ``limits``, ``stream_limits``) is registered; returns ``cfg``.

    Here and not in :class:`EvalConfig`: the scoring machinery knows no benchmark, so whoever
    builds an ``EvalConfig`` from user settings looks its probes up in this registry, before
    any model loads (a typo must not silently skip a probe).
    """
    unknown = [p for p in cfg.probes if p not in PROBES]
    if unknown:
        raise ValueError(f"unknown eval probe(s) {unknown}; valid: {list(PROBES)}")
    for key in ("limits", "stream_limits"):  # stream_probes: a subset of probes (EvalConfig)
        bad = sorted(set(getattr(cfg, key)) - set(PROBES))
        if bad:
            raise ValueError(f"eval.{key} has unknown probe(s) {bad}; valid: {list(PROBES)}")
    return cfg


def _probe(name: str) -> Probe:
    if name not in PROBES:
        raise ValueError(f"unknown eval probe {name!r}; valid: {list(PROBES)}")
    return PROBES[name]


def load_probe_data(name: str, cfg: EvalConfig) -> Rows:
    """Held-out rows of a probe with their provenance (``Rows.source``)."""
    return _probe(name).load(cfg)


def load_probe_rows(name: str, cfg: EvalConfig) -> list[dict[str, Any]]:
    """The first ``cfg.limit`` rows of a probe's fixed held-out split, in order."""
    return load_probe_data(name, cfg).rows


def select_probe_rows(
    name: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig
) -> list[dict[str, Any]]:
    """The rows to score before and after training, for probes whose rows depend on what the
    model knows before training (e.g. ``retention``); other probes' rows unchanged."""
    probe = _probe(name)
    if probe.select is None:
        return rows
    return probe.select(model, tokenizer, list(rows), cfg)


def score_probe_samples(
    name: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig
) -> ProbeResult:
    """Like :func:`score_probe`, plus per-example predictions and log-likelihoods."""
    with scoring_mode(model, cfg.precision):
        return _probe(name).score(model, tokenizer, list(rows), cfg)


def score_probe(
    name: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: EvalConfig
) -> dict[str, float]:
    """Score canonical rows (held-out probe rows, or e.g. the trained TriviaQA facts)."""
    return score_probe_samples(name, model, tokenizer, rows, cfg).metrics


def evaluate_probe_results(
    model: Any,
    tokenizer: Any,
    cfg: EvalConfig,
    rows_override: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, ProbeResult]:
    """``{probe: ProbeResult}`` (metrics and per-item totals) for every probe in
    ``cfg.probes``. ``rows_override[probe]`` replaces the loaded rows (the callback keeps
    them across calls)."""
    rows_override = rows_override or {}
    unknown = sorted(set(rows_override) - set(PROBES))
    if unknown:
        raise ValueError(f"rows_override has unknown probe(s) {unknown}; valid: {list(PROBES)}")
    out: dict[str, ProbeResult] = {}
    for name in cfg.probes:
        if name in rows_override:
            rows = rows_override[name]
        else:  # rows that depend on the model (retention) are selected on it as it is now
            rows = select_probe_rows(name, model, tokenizer, load_probe_rows(name, cfg), cfg)
        t0 = time.perf_counter()
        out[name] = score_probe_samples(name, model, tokenizer, rows, cfg)
        log.info("%s (%s, %d rows) scored in %.1f s: %s", name, cfg.protocol, len(rows),
                 time.perf_counter() - t0, out[name].metrics)
    return out


def evaluate_probes(
    model: Any,
    tokenizer: Any,
    cfg: EvalConfig,
    rows_override: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, dict[str, float]]:
    """``{probe: {metric: value}}`` for every probe in ``cfg.probes``."""
    results = evaluate_probe_results(model, tokenizer, cfg, rows_override)
    return {name: result.metrics for name, result in results.items()}


def primary_metric(probe: str, protocol: str) -> tuple[str, bool]:
    """(metric name, higher_is_better) that summarises a probe under a protocol."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {list(PROTOCOLS)}")
    return _probe(probe).primary[protocol]
