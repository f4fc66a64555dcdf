"""Score the target and every probe before and after training, on the same model object.

Before/after/delta land in the loggers (``before/<probe>/<metric>``, ...) and in
``self.results`` for results.json. Relative change (``rel_delta``, in %) says how much a
probe moved against its starting value, e.g. a perplexity increase of 3.2%; ``paired_ci``
gives each change's 95% interval over the probe's own items (after vs before on the same
articles, paragraphs or questions, :mod:`smfexp.eval.paired`), so a change the probe cannot
tell from its own sampling noise is visible as one.

Blocks that training never changes (under SMF, those below the lowest memory layer) are not
recomputed at every scoring pass: their outputs are reused from a store on disk shared by
every run of the model (:mod:`smfexp.eval.prefix`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from smfexp.data.modules import TargetSpec
from smfexp.data.sampling import evenly_spaced
from smfexp.errors import RunInterrupted
from smfexp.eval import EvalConfig
from smfexp.eval.paired import (
    ProbeItems,
    beyond_heldout_ci,
    items_from_json,
    items_to_json,
    paired_changes,
)
from smfexp.eval.prefix import FrozenPrefixModel, PrefixStore, frozen_depth, lower_fingerprint
from smfexp.memory import decoder_blocks, memories_are_silent, memory_blocks
from smfexp.stages.scores import Scored, cached_rows, cached_scored
from smfexp.tasks import (
    PROBES,
    evaluate_probe_results,
    load_probe_rows,
    primary_metric,
    score_probe_samples,
    select_probe_rows,
)
from smfexp.utils.io import cache_root, stable_hash
from smfexp.utils.modes import adapters_merged, eval_mode

log = logging.getLogger(__name__)

TARGET = "target"


@contextlib.contextmanager
def signals_stop_scoring(stop_on_first: bool) -> Iterator[None]:
    """SIGTERM / SIGINT during a scoring pass (Lightning only looks for them between steps).

    Before training nothing is lost, so the first signal stops at once. After training the
    trained weights are not saved yet, so the first signal only warns and the second stops.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in signums}
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if stop_on_first or len(received) > 1:
            raise RunInterrupted(signum, 0, None, "while scoring")
        log.warning("received %s while scoring the trained model; its weights are saved after "
                    "scoring - send it again to stop now and lose them",
                    signal.Signals(signum).name)

    for signum in signums:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def gates_zeroed(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily set every additive memory gate to 0 (bit-identical to the base model)."""
    blocks = [b for b in memory_blocks(model) if b.gate is not None]
    saved = [b.gate.detach().clone() for b in blocks]
    try:
        with torch.no_grad():
            for b in blocks:
                b.gate.zero_()
        yield
    finally:
        with torch.no_grad():
            for b, g in zip(blocks, saved, strict=True):
                b.gate.copy_(g)


def deltas(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict:
    delta: dict[str, dict[str, float]] = {}
    rel: dict[str, dict[str, float]] = {}
    for probe, metrics in after.items():
        for name, value in metrics.items():
            start = before.get(probe, {}).get(name)
            if name == "n" or start is None or not isinstance(value, int | float):
                continue
            delta.setdefault(probe, {})[name] = value - start
            if start and math.isfinite(start):
                rel.setdefault(probe, {})[name] = 100.0 * (value - start) / abs(start)
    return {"delta": delta, "rel_delta_pct": rel}


def gain_beyond_heldout(delta: dict[str, dict[str, float]], probe: str) -> dict[str, float]:
    """Target change minus ``probe``'s change, per metric both have.

    For fact learning the held-out questions share the trained facts' scorer and prompt, so
    whatever they gain too (answering in a few words, then stopping) is format; the rest is
    what was learned about the trained facts themselves.
    """
    target, other = delta.get(TARGET, {}), delta.get(probe, {})
    return {m: target[m] - other[m] for m in target if m in other}


DRAW_KEYS = ("target", "target_subset", "variants")  # cache key entries naming the fact draw


def _scored(results: dict[str, Any]) -> Scored:
    return Scored({p: r.metrics for p, r in results.items()},
                  {p: r.items for p, r in results.items() if r.items})


def _merged(first: Scored, second: Scored) -> Scored:
    return Scored({**first.scores, **second.scores}, {**first.items, **second.items})


class ForgettingCallback(Callback):
    """Runs the same scorers at fit start and fit end and records before/after/delta."""

    def __init__(
        self,
        eval_cfg: EvalConfig,
        target: TargetSpec,
        tokenizer: Any,
        cache_key: dict[str, Any] | None = None,
        stage_key: str | None = None,
    ) -> None:
        """``cache_key`` identifies (model, eval config, target rows): scores of the untouched
        base model are computed once per key and reused by every job of a sweep.
        ``stage_key`` (e.g. the retrofit checkpoint) identifies what was added before
        finetuning; ``None`` means the model entering training *is* the base model."""
        if target.replaces_probe in eval_cfg.probes:
            probes = [p for p in eval_cfg.probes if p != target.replaces_probe]
            eval_cfg = dataclasses.replace(eval_cfg, probes=probes)
        self.eval_cfg = eval_cfg
        self.target = target
        self.tokenizer = tokenizer
        self.probe_rows: dict[str, list[dict[str, Any]]] = {}  # loaded once, scored twice
        # rows chosen on the model before training (retention); kept in checkpoints
        self._selected: dict[str, list[dict[str, Any]]] = {}
        self.cache_key = cache_key
        self.stage_key = stage_key
        self.base: dict[str, dict[str, float]] = {}
        self.before: dict[str, dict[str, float]] = {}
        self.after: dict[str, dict[str, float]] = {}
        self.before_items: ProbeItems = {}  # per-item totals: the paired intervals' input
        self.after_items: ProbeItems = {}
        self.eval_seconds: dict[str, float] = {}
        self.beyond_heldout: dict[str, Any] | None = None  # set once the run is scored after
        self._prefix: FrozenPrefixModel | None = None

    # -- what is scored ---------------------------------------------------------------------
    def target_subset(self, start: int = 0, end: int | None = None,
                      limit: int | None = None) -> list[dict[str, Any]]:
        """``limit`` (default ``eval.limit``) facts evenly spaced over facts [start, end) of
        the stream: its start, middle and end alike."""
        rows = self.target.rows[start:end]
        return evenly_spaced(rows, self.eval_cfg.limit if limit is None else limit)

    def score_target(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> Scored:
        """The target's scorer on ``rows`` (e.g. the facts seen so far)."""
        result = score_probe_samples(self.target.probe, self.scoring_model(model),
                                     self.tokenizer, rows, self.eval_cfg)
        return Scored({TARGET: result.metrics}, {TARGET: result.items})

    def score_own(self, model: torch.nn.Module, target_rows: list[dict[str, Any]],
                  diagnostics: bool = False) -> Scored:
        """The target on ``target_rows`` and its held-out questions (with its other variants,
        e.g. its seen prompt, when ``diagnostics``): what depends on the fact draw."""
        with self.scoring(model) as scoring:
            results = {TARGET: score_probe_samples(self.target.probe, scoring, self.tokenizer,
                                                   target_rows, self.eval_cfg)}
            for name, variant in self.target.variants.items():
                heldout = name == self.target.heldout_probe
                if heldout or diagnostics:  # held-out rows: as many as the probes score
                    limit = self.eval_cfg.limit if heldout else self.eval_cfg.diagnostics_limit
                    results[name] = score_probe_samples(self.target.probe, scoring,
                                                        self.tokenizer,
                                                        evenly_spaced(variant, limit),
                                                        self.eval_cfg)
        return _scored(results)

    def score_probes(self, model: torch.nn.Module) -> Scored:
        """Every forgetting probe: the same rows for every draw and method."""
        self.prepare_rows(model)
        with self.scoring(model) as scoring:
            return _scored(evaluate_probe_results(scoring, self.tokenizer, self.eval_cfg,
                                                  self.probe_rows))

    def score_point(self, model: torch.nn.Module, target_rows: list[dict[str, Any]],
                    diagnostics: bool = False) -> Scored:
        """The target on ``target_rows``, the held-out questions and every probe (LoRA's
        adapters merged once for both parts)."""
        with adapters_merged(model):
            return _merged(self.score_own(model, target_rows, diagnostics),
                           self.score_probes(model))

    def score(self, model: torch.nn.Module) -> Scored:
        """The full before/after scoring: ``eval.limit`` facts spread over the stream."""
        return self.score_point(model, self.target_subset(), diagnostics=True)

    @contextlib.contextmanager
    def scoring(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model to score (eval mode, LoRA's adapters merged; blocks training leaves
        unchanged reused), and the reused blocks' new rows saved for later passes and runs
        afterwards."""
        try:
            with eval_mode(model), adapters_merged(model):
                yield self.scoring_model(model)
        finally:
            if self._prefix is not None:
                self._prefix.store.save()

    def scoring_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model``, wrapped to reuse the outputs of the leading blocks nothing trains
        (``eval.prefix_cache``); ``model`` itself when every block may change."""
        if not self.eval_cfg.prefix_cache:
            return model
        if self._prefix is not None and self._prefix.model is model:
            return self._prefix
        try:
            blocks = decoder_blocks(model)
        except ValueError:
            return model
        depth = frozen_depth(model, blocks)
        if depth == 0:
            return model
        device = next(model.parameters()).device.type
        name = f"{lower_fingerprint(model, blocks, depth)}-d{depth}-{self.eval_cfg.precision}" \
               f"-{device}"
        self._prefix = FrozenPrefixModel(model, blocks, depth,
                                         PrefixStore(cache_root() / "prefix" / name))
        log.info("scoring reuses blocks 0-%d (nothing trains them): cached in %s", depth - 1,
                 self._prefix.store.directory)
        return self._prefix

    def prepare_rows(self, model: torch.nn.Module) -> None:
        """Load every probe's rows once. Probes that keep what the model knows (retention)
        select their rows on ``model``, the model before training (cached with its scores)."""
        if self.probe_rows:
            return
        rows = {p: load_probe_rows(p, self.eval_cfg) for p in self.eval_cfg.probes}
        for probe in self.eval_cfg.probes:
            if probe in self._selected:
                rows[probe] = self._selected[probe]
            elif PROBES[probe].select is not None:
                rows[probe] = self._select(probe, model, rows[probe])
                self._selected[probe] = rows[probe]
        self.probe_rows = rows

    def _select(self, probe: str, model: torch.nn.Module,
                rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        def select() -> list[dict[str, Any]]:
            chosen = select_probe_rows(probe, model, self.tokenizer, rows, self.eval_cfg)
            log.info("%s: %d rows selected on the model before training", probe, len(chosen))
            return chosen

        if self.cache_key is None:
            return select()
        return cached_rows({**self.probes_key, "stage": self.stage_key, "select": probe}, select)

    def _log(self, trainer: Trainer, prefix: str, scores: dict[str, dict[str, float]]) -> None:
        flat = {
            f"{prefix}/{probe}/{k}": float(v)
            for probe, m in scores.items()
            for k, v in m.items()
            if isinstance(v, int | float)
        }
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=trainer.global_step)

    @property
    def probes_key(self) -> dict[str, Any]:
        """The cache key without the fact draw: what every draw's probes share."""
        return {k: v for k, v in (self.cache_key or {}).items() if k not in DRAW_KEYS}

    def _cached_scores(self, model: torch.nn.Module, stage: str | None) -> Scored:
        """The starting scores, cached in two parts: the draw's own (target, held-out
        questions) and the probes', which every draw and method of the model shares."""
        if self.cache_key is None:
            return self.score(model)
        own = cached_scored({**self.cache_key, "stage": stage, "items": True, "part": "own"},
                            lambda: self.score_own(model, self.target_subset(), True))
        probes = cached_scored({**self.probes_key, "stage": stage, "part": "probes"},
                               lambda: self.score_probes(model))
        return _merged(own, probes)

    def cached_start(self, key: dict[str, Any], score: Callable[[], Scored]) -> Scored:
        """``score()`` of the model before training, cached under ``key`` beside the before
        scores (every run that starts from the base model shares it). Valid from
        ``on_fit_start`` on, when the stage key is settled."""
        if self.cache_key is None:
            return score()
        return cached_scored({**self.cache_key, "stage": self.stage_key, "stream": key}, score)

    def cached_start_scores(self, key: dict[str, Any],
                            score: Callable[[], dict[str, dict[str, float]]]
                            ) -> dict[str, dict[str, float]]:
        """:meth:`cached_start` for scores without per-item totals (the stream's points)."""
        return self.cached_start(key, lambda: Scored(score(), {})).scores

    def restore_rows(self, model: torch.nn.Module) -> None:
        """A resumed run: load the probes' rows again, the ones selected on the model before
        training from the checkpoint (``model`` is no longer that model, so nothing may be
        selected on it). The stream and nested points read these rows too."""
        missing = [p for p in self.eval_cfg.probes
                   if PROBES[p].select is not None and p not in self._selected]
        if missing:
            raise ValueError(f"the checkpoint holds no {missing} rows selected before training "
                             "(an older checkpoint?): start the run again with resume=never")
        self.prepare_rows(model)  # every selecting probe is in self._selected: no selection

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.before:  # resumed run: the starting scores were taken already
            self.restore_rows(pl_module.model)
            return
        t0 = time.perf_counter()
        log.info("scoring target + probes before training")
        model = pl_module.model
        if self.stage_key is not None and memories_are_silent(model):
            self.stage_key = None  # zero-valued memories: this is the base model, share its cache
        with signals_stop_scoring(stop_on_first=True):
            self.prepare_rows(model)  # before any training step: what the model knows now
            before = self._cached_scores(model, self.stage_key)
            self.before, self.before_items = before.scores, before.items
            if self.stage_key is None:
                self.base = self.before
            elif all(b.gate is not None for b in memory_blocks(model)):
                with gates_zeroed(model):  # additive memories with g = 0 = the base model
                    self.base = self._cached_scores(model, None).scores
        self.eval_seconds["before"] = time.perf_counter() - t0
        self._log(trainer, "before", self.before)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        t0 = time.perf_counter()
        log.info("scoring target + probes after training")
        with signals_stop_scoring(stop_on_first=False):
            after = self.score(pl_module.model)
            self.after, self.after_items = after.scores, after.items
        self.eval_seconds["after"] = time.perf_counter() - t0
        self._log(trainer, "after", self.after)
        self._log(trainer, "delta", deltas(self.before, self.after)["delta"])
        self.beyond_heldout = self.target_beyond_heldout()
        if self.beyond_heldout:
            self._log(trainer, "beyond_heldout", {TARGET: self.beyond_heldout["delta"]})

    def target_beyond_heldout(self) -> dict[str, Any] | None:
        """``{"probe", "delta"}``: the target's gain minus its held-out probe's gain.

        None without a held-out probe (or before scoring). Refused, with a warning, if the
        probe's rows overlap the target's: the difference would then hide what it measures.
        """
        return self.beyond_heldout_of(self.before, self.after, self.before_items,
                                      self.after_items)

    def beyond_heldout_of(self, before: dict[str, dict[str, float]],
                          after: dict[str, dict[str, float]], before_items: ProbeItems,
                          after_items: ProbeItems) -> dict[str, Any] | None:
        """:meth:`target_beyond_heldout` of any scored point (the nested N too), with the
        interval of each gain (``ci``) where both item sets were kept."""
        probe = self.target.heldout_probe
        if not probe or probe not in after or TARGET not in after:
            return None
        trained = {stable_hash(r, 64) for r in self.target.rows}
        rows = self.target.variants.get(probe, self.probe_rows.get(probe, []))
        if any(stable_hash(r, 64) in trained for r in rows):
            log.warning("the %s probe shares questions with the target; no gain beyond held-out"
                        " is reported", probe)
            return None
        delta = deltas(before, after)["delta"]
        out: dict[str, Any] = {"probe": probe, "delta": gain_beyond_heldout(delta, probe)}
        ci = beyond_heldout_ci(before_items, after_items, TARGET, probe)
        if ci:
            out["ci"] = ci
        return out

    @property
    def results(self) -> dict[str, Any]:
        metric, higher = primary_metric(self.target.probe, self.eval_cfg.protocol)
        return {
            "target_probe": self.target.probe,
            "target_metric": metric,
            "target_higher_is_better": higher,
            "base": self.base,
            "before": self.before,
            "after": self.after,
            **deltas(self.before, self.after),
            "paired_ci": paired_changes(self.before_items, self.after_items) or None,
            "target_beyond_heldout": self.beyond_heldout,
            "eval_seconds": self.eval_seconds,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"before": self.before, "base": self.base, "selected_rows": self._selected,
                "before_items": items_to_json(self.before_items)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = state_dict.get("before", {})
        self.base = state_dict.get("base", {})
        self._selected = dict(state_dict.get("selected_rows", {}))
        self.before_items = items_from_json(state_dict.get("before_items", {}))
