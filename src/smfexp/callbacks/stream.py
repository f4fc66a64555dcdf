"""Learning and forgetting along the stream: cheap probe scores every ``every_n_facts`` facts.

Lin et al. draw, for each method, facts learned and each forgetting probe against training
steps. Here a fixed subset of the target (facts spread evenly over the stream, so the curve
shows both facts being learned as the stream reaches them and earlier ones being kept or
lost) and the first rows of every probe are scored at step 0, every ``every_n_facts`` facts,
and at the end. Full before/after scores stay the ForgettingCallback's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from smfexp.data.modules import TargetSpec
from smfexp.data.sampling import evenly_spaced
from smfexp.eval import EvalConfig
from smfexp.tasks import evaluate_probes, load_probe_rows, score_probe
from smfexp.utils.io import stable_hash
from smfexp.utils.modes import adapters_merged, eval_mode

log = logging.getLogger(__name__)

TARGET = "target"
Scores = dict[str, dict[str, float]]


class StreamProbeCallback(Callback):
    """Scores a target subset and every probe's first rows at fixed points of the stream."""

    def __init__(self, eval_cfg: EvalConfig, target: TargetSpec, tokenizer: Any,
                 probes: list[str], every_n_facts: int, facts_seen: Any,
                 steps_per_fact: int = 1, precision: str = "fp32",
                 probe_rows: Callable[[], dict[str, list[dict[str, Any]]]] | None = None,
                 cache_start: Callable[[dict[str, Any], Callable[[], Scores]], Scores]
                 | None = None) -> None:
        """``facts_seen(step)`` maps optimizer steps to facts reached (data module);
        ``precision`` is the resolved ``eval.stream_precision`` (fp32 | bf16);
        ``probe_rows()`` gives the rows the full before/after scoring uses (their first ones
        are scored here, so rows selected on the model before training are the same);
        ``cache_start(key, score)`` caches the first point (the untrained model's scores,
        the same for every run of a sweep that starts from the base model)."""
        if every_n_facts < 1:
            raise ValueError(f"eval.every_n_facts must be >= 1 (got {every_n_facts})")
        self.eval_cfg = dataclasses.replace(eval_cfg, probes=list(probes), progress=False,
                                            limit=eval_cfg.stream_limit,
                                            limits=dict(eval_cfg.stream_limits),
                                            precision=precision)
        self.target_rows = evenly_spaced(target.rows, eval_cfg.stream_limit)
        self.target_probe = target.probe
        self.tokenizer = tokenizer
        self.every = every_n_facts
        self.facts_seen = facts_seen
        self.steps_per_fact = steps_per_fact
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.probe_rows = probe_rows
        self.cache_start = cache_start
        self.points: list[dict[str, Any]] = []
        self._last_facts = -1

    def _score(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        facts = self.facts_seen(step)
        if facts == self._last_facts:
            return
        t0 = time.perf_counter()
        model = pl_module.model
        with eval_mode(model), adapters_merged(model):
            if not self.rows:
                self.rows = self._rows()
            if step == 0 and self.cache_start is not None:
                key = {"eval": {k: v for k, v in dataclasses.asdict(self.eval_cfg).items()
                                if k != "progress"},
                       "target": stable_hash(self.target_rows), "rows": stable_hash(self.rows)}
                scores = self.cache_start(key, lambda: self._scores(model))
            else:
                scores = self._scores(model)
        self._last_facts = facts
        point = {"step": step, "facts": facts, "scores": scores,
                 "seconds": time.perf_counter() - t0}
        fill = getattr(pl_module, "memory_fill", None)
        if callable(fill):  # SMF: how much of the memory the stream has written so far
            point["memory"] = fill()
        self.points.append(point)
        flat = {f"stream/{probe}/{k}": float(v) for probe, m in scores.items()
                for k, v in m.items() if k != "n"}
        flat["stream/facts"] = float(facts)
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=step)

    def _scores(self, model: torch.nn.Module) -> Scores:
        scores = {TARGET: score_probe(self.target_probe, model, self.tokenizer,
                                      self.target_rows, self.eval_cfg)}
        scores.update(evaluate_probes(model, self.tokenizer, self.eval_cfg, self.rows))
        return scores

    def _rows(self) -> dict[str, list[dict[str, Any]]]:
        full = self.probe_rows() if self.probe_rows is not None else {}
        rows = {}
        for probe in self.eval_cfg.probes:
            if probe in full:
                limit = self.eval_cfg.limit_for(probe)
                rows[probe] = full[probe][:limit] if limit else list(full[probe])
            else:
                rows[probe] = load_probe_rows(probe, self.eval_cfg)
        return rows

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.points:
            self._score(trainer, pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step and step % (self.every * self.steps_per_fact) == 0:
            self._score(trainer, pl_module, step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._score(trainer, pl_module, trainer.global_step)

    @property
    def results(self) -> dict[str, Any]:
        return {"every_n_facts": self.every, "limit": self.eval_cfg.limit,
                "target_rows": len(self.target_rows), "points": self.points}

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points, "last_facts": self._last_facts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = list(state_dict.get("points", []))
        self._last_facts = state_dict.get("last_facts", -1)
