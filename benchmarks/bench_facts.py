"""Fact-stream benchmark pieces (issue 24): the batches, a per-phase clock for the SMF step,
the floor each phase has, the plan of the fact-stream section and the real-run reader.

Today's experiments spend their time in one kind of step: 4-8 short phrasings of one fact
through the model with an empty (zero-valued) 262K-slot memory. ``cases.py`` runs each
configuration in its own child process; this module holds what those children need that is
specific to the fact stream, so it imports nothing from ``cases.py``.

The phase clock wraps the functions the SMF step calls (module globals of
``smfexp.methods.smf``, the counter, the diagnostics, the optimizer) inside the child only:
nothing in ``src/`` changes, and each wrapped call also opens a ``torch.profiler``
``record_function`` range of the same name, so a profiler trace shows the same phases.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning import Callback

ROOT = Path(__file__).resolve().parents[1]

# (key, label, what the floor is). Order = the order of the report's table.
PHASES: tuple[tuple[str, str, str], ...] = (
    ("forward", "forward (decoder, memory reads)",
     "the decoder alone under inference_mode (same batch, same weights)"),
    ("loss_head", "loss head (chunked vocabulary projection + CE + its gradient)",
     "logits = h W^T and dL/dh = g W for the scored positions only (inference_mode)"),
    ("backward", "backward (stops at the lowest memory layer)",
     "~1x the inference forward of the blocks it crosses (input gradients only)"),
    ("counting", "access counting (masked index_add + reset of every slot)",
     "index_add_ of the step's reads alone (no mask, no table-wide reset)"),
    ("selection", "selection (selector over every slot, top_t)",
     "topk over the read slots' counts only"),
    ("grad_rows", "gradient rows (deferred: selected rows only)",
     "none measured: already O(reads + rows x D)"),
    ("update", "row update (set rows, row_rms scaling, optimizer step, zero_grad)",
     "index_add_ of top_t rows into each table"),
    ("norm", "gradient norm / non-finite check (clip_grad_norm_)", "0 (one norm of t x D)"),
    ("diagnostics", "diagnostics (SelectionDiagnostics, answer weight, score stats)",
     "0 (optional per step)"),
    ("sparse_rest", "rest of _sparse_step (per-layer stats over whole tables, touched marks, "
     "scheduler)", "0"),
    ("train_rest", "rest of training_step (finite check, masks, fact id)", "~0"),
    ("logging", "logging (self.log / self.log_dict)", "0"),
    ("lightning", "Lightning overhead (loop, hooks, LightningOptimizer wrapper)", "0"),
)
PHASE_KEYS = tuple(k for k, _, _ in PHASES)


# =========================================================================== settings helpers
def data_dir(configured: str | None) -> str:
    """The offline data folder: --data-dir, $SMFEXP_DATA_DIR, else <checkout>/data."""
    return str(configured or os.environ.get("SMFEXP_DATA_DIR") or ROOT / "data")


def fact_overrides(spec: dict[str, Any], s: Any) -> list[str]:
    """Hydra overrides of one fact-stream configuration (the recommended protocol's shape)."""
    steps_per_fact = 2
    n_facts = math.ceil((s.warmup + s.fact_runs) / steps_per_fact)
    out = [
        f"method={spec['method']}",
        "data=triviaqa_facts",
        f"data.phrasings_per_step={spec['phrasings']}",
        f"data.steps_per_fact={steps_per_fact}",
        f"data.n_facts={n_facts}",
        "memory=empty",
        f"memory.n_keys={spec.get('n_keys') or s.fact_keys[0]}",
        f"paths.data_dir={data_dir(s.data_dir)}",
    ]
    if spec["method"] == "smf":
        out.append(f"method.top_t={s.fact_top_t}")
    return out


def fact_batches(cfg: Any, tokenizer: Any, n: int) -> list[dict[str, Any]]:
    """The first ``n`` steps of the fact stream (real phrasings, real lengths)."""
    import hydra

    dm = hydra.utils.instantiate(cfg.data, tokenizer=tokenizer, _convert_="all")
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def batch_shape(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Real tokens and padded length per step (what the timings are of)."""
    return {
        "real_tokens": [int(b["attention_mask"].sum()) for b in batches],
        "padded": [list(b["input_ids"].shape) for b in batches],
    }


# =========================================================================== phase clock
class PhaseClock:
    """Exclusive wall time per phase: a wrapped call's time minus the wrapped calls inside it
    (so nested phases, e.g. ``log_dict`` calling ``log``, are not counted twice)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[Any]] = []

    def enter(self, phase: str) -> None:
        rf = torch.profiler.record_function(phase)
        rf.__enter__()
        self._stack.append([phase, time.perf_counter(), 0.0, rf])

    def exit(self) -> None:
        phase, t0, inner, rf = self._stack.pop()
        dt = time.perf_counter() - t0
        rf.__exit__(None, None, None)
        self.totals[phase] += dt - inner
        if self._stack:
            self._stack[-1][2] += dt

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed

    def take(self) -> dict[str, float]:
        """The totals since the last call (and start again)."""
        out = dict(self.totals)
        self.totals.clear()
        return out


class PhaseSteps(Callback):
    """Per training batch: its wall time and the clock's phases; the rest is Lightning's."""

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock
        self.steps: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self.clock.take()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, out: Any, batch: Any,
                           idx: int) -> None:
        wall = time.perf_counter() - self._t0
        phases = self.clock.take()
        phases["lightning"] = phases.get("lightning", 0.0) + wall - sum(phases.values())
        self.steps.append({"wall": wall, **phases})


def loss_module() -> Any:
    """The module with the chunked loss helpers."""
    import smfexp.training.loss as loss

    return loss


def _patch(obj: Any, name: str, clock: PhaseClock, phase: str) -> None:
    setattr(obj, name, clock.wrap(phase, getattr(obj, name)))


def instrument_smf(module: Any, clock: PhaseClock) -> None:
    """Wrap every part of the SMF step in ``clock`` (in this child process only)."""
    import lightning.pytorch.core.optimizer as lopt

    import smfexp.methods.smf as smf
    from smfexp.smf.sparse_optim import RowSparseAdam, RowSparseSGD

    for name, phase in (("causal_lm_loss", "loss_head"), ("select", "selection"),
                        ("_build_selected_grad", "grad_rows"), ("normalise_row_step", "update"),
                        ("clip_grad_norm_", "norm"), ("weight_on_rows", "diagnostics"),
                        ("selector_score_stats", "diagnostics")):
        _patch(smf, name, clock, phase)
    for name, phase in (("training_step", "train_rest"), ("_sparse_step", "sparse_rest"),
                        ("manual_backward", "backward"), ("log", "logging"),
                        ("log_dict", "logging")):
        _patch(module, name, clock, phase)
    for name in ("add", "reset", "all_reduce"):
        _patch(module.counter, name, clock, "counting")
    for name in ("step", "add"):
        _patch(module.diagnostics, name, clock, "diagnostics")
    for cls in (RowSparseSGD, RowSparseAdam):
        for name in ("step", "set_selected_rows", "zero_grad"):
            _patch(cls, name, clock, "update")
    _patch(lopt.LightningOptimizer, "step", clock, "lightning")
    decoder = loss_module()._causal_lm(module.model).get_decoder()

    def start(*_: Any) -> None:
        clock.enter("forward")

    def stop(*_: Any) -> None:
        clock.exit()

    decoder.register_forward_pre_hook(start)
    decoder.register_forward_hook(stop)


def phase_medians(steps: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds per phase over the steps (0 where a step had none) and of the step."""
    keys = ["wall", *PHASE_KEYS]
    return {k: statistics.median(st.get(k, 0.0) for st in steps) for k in keys} if steps else {}


# =========================================================================== floors
def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _forward_floor(decoder: Any, weights: dict[str, Any], batch: dict[str, Any],
                   first_block: Any) -> tuple[float, float, Any]:
    """(decoder forward s, forward s from the lowest memory block on, last hidden state)."""
    from torch.func import functional_call

    marks: dict[str, float] = {}

    def mark(*_: Any) -> None:  # a pre-hook that returns a value would replace the input
        marks.setdefault("block", time.perf_counter())

    hook = first_block.register_forward_pre_hook(mark)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    try:
        t0 = time.perf_counter()
        out = (functional_call(decoder, weights, args=(), kwargs=inputs) if weights
               else decoder(**inputs))
        t1 = time.perf_counter()
    finally:
        hook.remove()
    return t1 - t0, t1 - marks.get("block", t0), out.last_hidden_state


def _reads_floors(memories: list[Any], t: int) -> tuple[float, float]:
    """(index_add_ of the reads, topk over the read slots' counts) summed over layers."""
    count_s = select_s = 0.0
    for m in memories:
        idx = m.last_indices.reshape(-1)
        counts = torch.zeros(m.n_slots, dtype=torch.int64)
        ones = torch.ones_like(idx)
        count_s += _timed(lambda c=counts, i=idx, o=ones: c.index_add_(0, i, o))
        read = torch.unique(idx)  # not timed: the floor of selection is the topk itself
        select_s += _timed(lambda c=counts, r=read: torch.topk(c[r], min(t, r.numel())))
    return count_s, select_s


def _update_floor(memories: list[Any], t: int) -> float:
    """index_add_ of ``t`` rows (zeros: the tables do not change) into every table."""
    total = 0.0
    gen = torch.Generator().manual_seed(0)
    for m in memories:
        values = m.values.data
        rows = torch.randperm(values.shape[0], generator=gen)[: min(t, values.shape[0])].sort()[0]
        block = torch.zeros(rows.numel(), values.shape[1], dtype=values.dtype)
        total += _timed(lambda v=values, r=rows, b=block: v.index_add_(0, r, b))
    return total


def measure_floors(module: Any, batches: list[dict[str, Any]], precision: str,
                   top_t: int) -> dict[str, list[float]]:
    """The floor of each phase, once per batch (the same batches the steps ran on)."""
    from smfexp.memory import memory_layer_indices
    from smfexp.utils.precision import autocast_for

    loss = loss_module()
    lm = loss._causal_lm(module.model)
    decoder, head = lm.get_decoder(), lm.get_output_embeddings()
    first_block = decoder.layers[min(memory_layer_indices(lm))]
    module.model.eval()
    floors: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode(), autocast_for(precision):
        weights, head_w = module.frozen_casts.get(decoder, head)
        w = head_w if head_w is not None else head.weight
        for batch in batches:
            fwd, span, hidden = _forward_floor(decoder, weights, batch, first_block)
            h = hidden[loss.loss_bearing_mask(batch["labels"])]
            floors["forward"].append(fwd)
            floors["backward"].append(span)
            floors["loss_head"].append(_timed(lambda h=h: (h @ w.t()) @ w))
            count_s, select_s = _reads_floors(module.memories, top_t)
            floors["counting"].append(count_s)
            floors["selection"].append(select_s)
            floors["update"].append(_update_floor(module.memories, top_t))
    return dict(floors)


# =========================================================================== plan
def plan_facts(s: Any) -> list[dict[str, Any]]:
    """Fact-step configurations (SMF at every table size, LoRA, full), then the phase runs."""
    specs: list[dict[str, Any]] = []
    for prec, short in (("32-true", "fp32"), ("bf16-mixed", "bf16")):
        for p in s.fact_phrasings:
            runs = [("smf", k) for k in s.fact_keys] + [("lora", None), ("full", None)]
            for method, keys in runs:
                name = f"smf/{keys}" if keys else method
                specs.append({
                    "section": "facts", "id": f"facts/{name}/p{p}/{short}",
                    "label": f"{name} {p} phrasings {short}", "method": method,
                    "n_keys": keys, "phrasings": p, "precision": prec,
                })
    for keys, prec, short in ((s.fact_keys[0], "32-true", "fp32"),
                              (s.fact_keys[-1], "32-true", "fp32"),
                              (s.fact_keys[0], "bf16-mixed", "bf16")):
        p = s.fact_phrasings[0]
        specs.append({
            "section": "phases", "id": f"phases/smf/{keys}/p{p}/{short}",
            "label": f"SMF phases {keys} {p} phrasings {short}", "method": "smf",
            "n_keys": keys, "phrasings": p, "precision": prec,
        })
    return specs


# =========================================================================== real runs
@dataclass
class StreamRun:
    """What one results.json says about a run's time: total wall and time spent scoring."""

    path: str
    method: str
    n_facts: int | None
    wall: float
    scoring: float
    eval_before_after: float
    stream_probes: float
    nested: float


def _seconds(values: Any) -> float:
    return float(sum(v for v in values if isinstance(v, int | float)))


def read_stream_run(path: Path) -> StreamRun | None:
    """One results.json -> its wall time and scoring time; None if it has no wall time or
    was resumed (its wall time is then only the last piece's)."""
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    wall = r.get("wall_seconds")
    wall = wall.get("total") if isinstance(wall, dict) else wall
    if not isinstance(wall, int | float) or r.get("status", "ok") != "ok" \
            or r.get("resumed_from"):
        return None
    before_after = _seconds((r.get("eval_seconds") or {}).values())
    points = (r.get("stream") or {}).get("points") or []
    probes = _seconds(p.get("seconds") for p in points)
    nested = _seconds(n.get("seconds") for n in (r.get("nested") or {}).values())
    data = r.get("data") or {}
    n_facts = data.get("n_facts") or max((int(k) for k in r.get("nested") or {}), default=None)
    return StreamRun(str(path), str(r.get("method")), n_facts, float(wall),
                     before_after + probes + nested, before_after, probes, nested)


def read_stream_runs(directories: str | Path) -> list[StreamRun]:
    """Every readable results.json under ``directories`` (one folder, or several separated by
    commas), recursively."""
    paths = [Path(d) for d in str(directories).split(",") if d.strip()]
    runs = (read_stream_run(p) for d in paths for p in sorted(d.rglob("results.json")))
    return [r for r in runs if r is not None]


def summarise_stream_runs(runs: list[StreamRun]) -> list[dict[str, Any]]:
    """Median per (method, stream length): wall, scoring and the scoring share."""
    groups: dict[tuple[str, int | None], list[StreamRun]] = defaultdict(list)
    for r in runs:
        groups[(r.method, r.n_facts)].append(r)
    out = []
    for (method, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        wall = statistics.median(r.wall for r in rs)
        scoring = statistics.median(r.scoring for r in rs)
        share = statistics.median(r.scoring / r.wall for r in rs if r.wall > 0)
        out.append({"method": method, "n_facts": n, "runs": len(rs), "wall": wall,
                    "scoring": scoring, "share": share})
    return out
