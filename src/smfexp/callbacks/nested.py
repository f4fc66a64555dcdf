"""Nested streams and retention of earlier facts: what one long run says about every N.

A stream of n facts is the first n facts of any longer stream with the same draw
(``data.facts_seed``), so a 1000-fact run passes through the 64- and 256-fact runs on its
way. At each N of ``eval.nested_at`` this callback scores what the full before/after scoring
scores - the facts seen so far (``eval.limit`` of them, evenly spaced), the held-out questions
and every forgetting probe on the same rows, with each change's paired interval - so
results.json ``nested[N]`` is that N's results at the cost of one extra scoring pass, not one
run per N.

With ``eval.earlier_facts`` it also scores each quarter of the stream right after it was
learned and again at the end (``earlier_facts``): the continual-learning number, how much of
what was learned early survives the rest of the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from lightning import Callback, LightningModule, Trainer

from smfexp.callbacks.forgetting import TARGET, ForgettingCallback, deltas
from smfexp.eval.item_scores import point_json
from smfexp.eval.paired import items_from_json, items_to_json, paired_changes
from smfexp.stages.scores import Scored
from smfexp.tasks import primary_metric
from smfexp.utils.io import stable_hash

log = logging.getLogger(__name__)

Scores = dict[str, dict[str, float]]
QUARTERS = 4


def quarter_bounds(n_facts: int) -> list[tuple[int, int]]:
    """[start, end) fact indices of the four quarters of an ``n_facts`` stream."""
    return [(q * n_facts // QUARTERS, (q + 1) * n_facts // QUARTERS) for q in range(QUARTERS)]


def kept_share(right_after: float | None, end: float | None) -> float | None:
    """Share of the right-after score still there at the end (None when nothing was learned)."""
    if right_after is None or end is None or right_after <= 0:
        return None
    return end / right_after


class NestedStreamCallback(Callback):
    """Full scores after the first N facts (``nested_at``) and per-quarter retention."""

    def __init__(self, forgetting: ForgettingCallback, n_facts: int, steps_per_fact: int,
                 facts_seen: Callable[[int], int], nested_at: list[int] | None,
                 earlier_facts: bool) -> None:
        """``forgetting`` holds the probes, their rows and the before scores (and scores the
        last N itself, at fit end); ``facts_seen(step)`` maps optimizer steps to facts."""
        self.forgetting = forgetting
        self.n_facts = n_facts
        self.steps_per_fact = steps_per_fact
        self.facts_seen = facts_seen
        self.nested_at = sorted({int(n) for n in nested_at or [] if 0 < int(n) <= n_facts})
        self.earlier = earlier_facts
        self.nested: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, Any]] = {}  # N -> per-item totals (items.json)
        self.right_after: dict[int, dict[str, float]] = {}  # quarter -> target scores
        self.start: dict[int, Scored] = {}  # N -> the base model on its facts
        self.earlier_results: dict[str, Any] | None = None

    # -- what is scored -------------------------------------------------------------------
    def _target(self, pl_module: LightningModule, rows: list[dict[str, Any]]) -> Scored:
        f = self.forgetting
        with f.scoring(pl_module.model):
            return f.score_target(pl_module.model, rows)

    def _quarter_rows(self, quarter: int) -> list[dict[str, Any]]:
        start, end = quarter_bounds(self.n_facts)[quarter]
        f = self.forgetting
        return f.target_subset(start, end, f.eval_cfg.diagnostics_limit)

    @staticmethod
    def _fill(pl_module: LightningModule) -> dict[str, Any] | None:
        """How full the memory is (SMF's ``memory_fill``), None for methods without one."""
        fill = getattr(pl_module, "memory_fill", None)
        return fill() if callable(fill) else None

    # -- hooks ----------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The base model's scores on each intermediate N's facts (cached: every run of a
        sweep that starts from the base model shares them)."""
        for n in self.nested_at:
            if n == self.n_facts or n in self.start:
                continue
            rows = self.forgetting.target_subset(0, n)
            key = {"nested_target": stable_hash(rows), "probe": self.forgetting.target.probe,
                   "items": True}
            self.start[n] = self.forgetting.cached_start(
                key, lambda rows=rows: self._target(pl_module, rows))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not step or step % self.steps_per_fact:
            return
        facts = self.facts_seen(step)
        if facts >= self.n_facts:
            return  # the last N is the full after-scoring (on_fit_end)
        if facts in self.nested_at and str(facts) not in self.nested:
            self._score_nested(pl_module, facts, step)
        if self.earlier:
            for q, (_, end) in enumerate(quarter_bounds(self.n_facts)):
                if facts == end and q not in self.right_after:
                    self._score_quarter(pl_module, q)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """After the ForgettingCallback scored the end of the stream (it runs first)."""
        f = self.forgetting
        if self.n_facts in self.nested_at and f.after:
            self.nested[str(self.n_facts)] = {
                "facts": self.n_facts, "step": trainer.global_step, "before": f.before,
                "after": f.after, **deltas(f.before, f.after),
                "paired_ci": paired_changes(f.before_items, f.after_items) or None,
                "target_beyond_heldout": f.beyond_heldout,
                "memory": self._fill(pl_module)}
            self.items[str(self.n_facts)] = point_json(f.before_items, f.after_items)
        if self.earlier:
            self.earlier_results = self._earlier(pl_module)

    # -- one N, one quarter -------------------------------------------------------------
    def _score_nested(self, pl_module: LightningModule, facts: int, step: int) -> None:
        t0 = time.perf_counter()
        f = self.forgetting
        scored = f.score_point(pl_module.model, f.target_subset(0, facts))
        after = scored.scores
        start = self.start[facts]
        before = {TARGET: start.scores[TARGET],
                  **{p: s for p, s in f.before.items() if p in after and p != TARGET}}
        before_items = {**{p: i for p, i in f.before_items.items() if p != TARGET},
                        **start.items}
        self.nested[str(facts)] = {
            "facts": facts, "step": step, "before": before, "after": after,
            **deltas(before, after),
            "paired_ci": paired_changes(before_items, scored.items) or None,
            "target_beyond_heldout": f.beyond_heldout_of(before, after, before_items,
                                                         scored.items),
            "memory": self._fill(pl_module),
            "seconds": time.perf_counter() - t0}
        self.items[str(facts)] = point_json(before_items, scored.items)
        log.info("after %d facts: target %s (%.0f s)", facts, after[TARGET],
                 time.perf_counter() - t0)

    def _score_quarter(self, pl_module: LightningModule, quarter: int) -> None:
        rows = self._quarter_rows(quarter)
        self.right_after[quarter] = self._target(pl_module, rows).scores[TARGET]

    def _earlier(self, pl_module: LightningModule) -> dict[str, Any]:
        """Each quarter right after it was learned vs at the end of the stream."""
        metric, _ = primary_metric(self.forgetting.target.probe, self.forgetting.eval_cfg.protocol)
        quarters = []
        for q, (start, end) in enumerate(quarter_bounds(self.n_facts)):
            rows = self._quarter_rows(q)
            now = self._target(pl_module, rows).scores[TARGET]
            after = self.right_after.get(q, now)  # the last quarter ends with the stream
            quarters.append({"quarter": q + 1, "facts": [start, end], "n": len(rows),
                             "right_after": after.get(metric), "end": now.get(metric),
                             "kept": kept_share(after.get(metric), now.get(metric))})
        return {"metric": metric, "quarters": quarters}

    # -- results and resume -------------------------------------------------------------
    @property
    def results(self) -> dict[str, Any]:
        return {"nested": self.nested or None, "earlier_facts": self.earlier_results}

    def state_dict(self) -> dict[str, Any]:
        start = {n: {"scores": s.scores, "items": items_to_json(s.items)}
                 for n, s in self.start.items()}
        return {"nested": self.nested, "right_after": self.right_after, "start": start,
                "items": self.items}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.nested = dict(state_dict.get("nested", {}))
        self.items = dict(state_dict.get("items", {}))
        self.right_after = {int(k): v for k, v in state_dict.get("right_after", {}).items()}
        self.start = {}
        for n, entry in state_dict.get("start", {}).items():
            if "scores" in entry:
                self.start[int(n)] = Scored(entry["scores"],
                                            items_from_json(entry.get("items", {})))
            else:  # a checkpoint from before per-item totals: the target's metrics alone
                self.start[int(n)] = Scored({TARGET: entry}, {})
