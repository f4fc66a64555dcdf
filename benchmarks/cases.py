"""The measuring half of the benchmark suite: every configuration (case), the timers, the
child process each one runs in. ``suite_plan.py`` lists the configurations, ``machine.py``
describes the machine, ``bench_report/`` writes the Markdown and ``suite.py`` is the command
line that drives them.

How it measures:

* Every configuration runs in its own child process, forked from the suite after the heavy
  imports and before any tensor work, so ``getrusage(RUSAGE_SELF).ru_maxrss`` in the child is
  that configuration's peak RSS (imported libraries included; an idle child is reported as
  the baseline).
* A child times ``--runs`` repetitions after ``--warmup`` untimed ones; tables show medians of
  wall time and of process CPU time, and every ratio divides medians from the same suite run.
* Training steps use the real method modules: the composed Hydra config (``conf/train.yaml``
  with ``method=...``, ``selector=...``, ``method.grad_accum=1``), ``runner.build_method`` and
  a real Lightning Trainer, one optimizer step per batch, on one fixed random-token batch. A
  step is Lightning's ``on_train_batch_start`` -> ``on_train_batch_end``: forward, backward,
  (SMF: count reads, select rows, clip) and the optimizer update.
* The fact-stream section (``bench_facts.py``) times the same real modules on the first
  steps of a real fact stream instead (``data=triviaqa_facts``: the phrasings of one fact per
  step, their real lengths) with ``memory=empty`` tables; its phase runs wrap the SMF step's
  functions in a clock inside the child only.
* Memories are attached fresh (random init, no retrofit: the cost does not depend on the
  values); tfidf/kl read synthetic random background counts, so no background pass runs.
* ``--quick``: the tiny random model (``conf/model/tiny.yaml``), a small batch, small tables
  and a few eval rows - a smoke test of the suite (about a minute), not a measurement.
"""

# ruff: noqa: E402 - the imports below need sys.path set up first
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TQDM_DISABLE", "1")  # children log to files; no progress bars

import lightning as L
import torch
from bench_eval import (
    METRIC,
    probe_rows,
    smfexp_config,
    time_lm_eval,
    time_smfexp,
    warm_up,
)
from bench_facts import (
    PhaseClock,
    PhaseSteps,
    batch_shape,
    fact_batches,
    fact_overrides,
    instrument_smf,
    measure_floors,
    phase_medians,
)
from bench_sparse_update import _available_gb, make_case, time_interleaved
from dense_masked import DenseMaskedAdamW
from mdtable import GiB
from omegaconf import DictConfig, OmegaConf
from suite_plan import Settings
from torch.utils.data import DataLoader

from smfexp.eval.reference import write_task
from smfexp.memory import MemoryConfig, attach_memory, memory_layer_indices, memory_modules
from smfexp.models.loading import ModelSpec, load_model
from smfexp.run_config import Target
from smfexp.runner import build_method
from smfexp.smf.background import BackgroundStats
from smfexp.smf.selectors import NEEDS_BACKGROUND
from smfexp.smf.sparse_optim import RowSparseAdam, RowSparseSGD
from smfexp.utils.precision import autocast_for

CONF = ROOT / "conf"


# =========================================================================== child helpers
def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def quiet_libraries() -> None:
    """Children: no Lightning banners / dataloader-worker hints in the progress output."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "smfexp", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with contextlib.suppress(Exception):
        import transformers

        transformers.logging.set_verbosity_error()


def bench_model(name: str) -> tuple[Any, Any]:
    """``load_model`` on ``conf/model/<name>.yaml`` (as Hydra would compose it)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"), resolve=True)
    return load_model(ModelSpec.from_config(cfg))


def default_memory(n_keys: int) -> MemoryConfig:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "memory" / "default.yaml"), resolve=True)
    assert isinstance(cfg, dict)
    return MemoryConfig.from_config({**cfg, "n_keys": n_keys})


def table_bytes(n_layers: int, n_keys: int, dim: int) -> int:
    return n_layers * n_keys * n_keys * dim * 4  # float32 value tables


def memory_shape(model: Any, n_keys: int) -> tuple[int, int]:
    """(memory layers, v_dim) the default memory config gives this model."""
    cfg = default_memory(n_keys)
    return len(cfg.resolve_layers(model.config.num_hidden_layers)), cfg.v_dim or (
        model.config.hidden_size
    )


def enough_memory(need: float, dense: bool = False, s: Settings | None = None) -> str | None:
    """None if ``need`` bytes (+1 GiB headroom) are available, else why the config is skipped.

    Dense-masked configs needing > 4 GiB run only with ``--dense-large`` (shared machines)."""
    if dense and need > 4 * GiB and not (s and s.dense_large):
        return f"needs ~{need / GiB:.0f} GiB; pass --dense-large to run it"
    avail = _available_gb()
    if avail < need / GiB + 1:
        return f"needs ~{need / GiB:.1f} GiB, {avail:.1f} GiB available"
    return None


def token_batch(vocab: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def timed_reps(fn: Callable[[], Any], warmup: int, runs: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}


def synthetic_background(n_slots: list[int], n_batches: int = 64) -> BackgroundStats:
    """Random df/reads per slot (a stand-in for the 4-minute background pass; same shapes)."""
    gen = torch.Generator().manual_seed(0)
    df = [torch.randint(0, n_batches + 1, (n,), generator=gen) for n in n_slots]
    reads = [d * torch.randint(1, 9, d.shape, generator=gen) for d in df]
    return BackgroundStats(df, reads, n_batches, meta={"synthetic": True})


class StepTimer(L.Callback):
    """Wall and CPU time of each training batch: forward + backward + optimizer update."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.loss: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self._w0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, out: Any, batch: Any, idx: int
    ) -> None:
        self.wall.append(time.perf_counter() - self._w0)
        self.cpu.append(time.process_time() - self._c0)
        loss = out["loss"] if isinstance(out, dict) else out
        self.loss.append(float(loss) if loss is not None else float("nan"))


def compose_train(settings: Settings, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"model={settings.model}",
                "trainer=cpu",
                "logger=csv",
                "method.grad_accum=1",
                *overrides,
            ],
        )


def use_dense_masked_update(module: Any) -> None:
    """SMF with the flawed dense masked-AdamW value update (reference implementations): the
    method's own step (count, select, ``set_selected_rows``, clip, step) runs unchanged, only
    the value optimizer is swapped for :class:`DenseMaskedAdamW`."""
    build = module.configure_optimizers

    def configure() -> Any:
        optimizers, schedulers = build()
        dense = DenseMaskedAdamW([m.values for m in module.memories], lr=5e-4)
        optimizers[0] = dense
        schedulers[0] = torch.optim.lr_scheduler.LambdaLR(dense, lambda _: 1.0)
        return optimizers, schedulers

    module.configure_optimizers = configure


# =========================================================================== children
def child_idle(spec: dict[str, Any], s: Settings) -> dict[str, Any]:
    return {}


def child_forward(spec: dict[str, Any], s: Settings) -> dict[str, Any]:
    model, _ = bench_model(s.model)
    out: dict[str, Any] = {}
    if spec["memory"]:
        attach_memory(model, default_memory(s.small_keys))
        out["layers"] = memory_layer_indices(model)
        out["slots"] = s.small_keys**2
    x = token_batch(model.config.vocab_size, s.batch, s.seq)["input_ids"]
    with torch.inference_mode(), autocast_for(spec["precision"]):
        out.update(timed_reps(lambda: model(input_ids=x), s.warmup, s.runs))
    return out


def old_shape_overrides(spec: dict[str, Any], s: Settings) -> list[str]:
    """Overrides of the old-shape train/scaling configs: the 16K-slot retrofitted memory of
    ``conf/memory/default.yaml`` (not today's empty 262K one), selector and optimizer."""
    method = spec["method"]
    overrides = [f"method={method}", "memory=default",
                 f"memory.n_keys={spec.get('n_keys', s.small_keys)}"]
    if method == "smf":
        overrides.append(f"selector={spec.get('selector') or 'tfidf'}")
    if spec.get("update") == "row_sparse+ckpt":  # activations recomputed in backward
        overrides.append("method.gradient_checkpointing=true")
    if spec.get("optimizer"):
        overrides.append(f"method.optimizer={spec['optimizer']}")
    if spec.get("optimizer") == "adam":  # row_rms is an SGD step size; Adam takes a plain lr
        overrides += ["method.lr_unit=raw", "method.lr=1e-3"]
    return overrides


def trainer_kwargs(cfg: DictConfig, module: Any, precision: str) -> dict[str, Any]:
    """The composed trainer config for a timing run: one epoch, no logger, no checkpoints."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(kwargs, dict)
    kwargs.update(
        precision=precision,
        max_epochs=1,
        max_steps=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    kwargs.update(module.trainer_settings())  # as runner.train: SMF accumulates and clips itself
    return kwargs


def child_train(spec: dict[str, Any], s: Settings) -> dict[str, Any]:
    method, selector = spec["method"], spec.get("selector") or "tfidf"
    n_keys = spec.get("n_keys", s.small_keys)
    cfg = compose_train(s, old_shape_overrides(spec, s))
    model, tok = bench_model(s.model)
    extra: dict[str, Any] = {}
    out: dict[str, Any] = {}
    if method == "smf":
        n_layers, dim = memory_shape(model, n_keys)
        tables = table_bytes(n_layers, n_keys, dim)
        copies = 6 if spec.get("update") == "dense_masked" else 1  # + grad, 2 moments, temps
        reason = enough_memory(copies * tables + 3 * GiB, copies > 1, s)
        if reason:
            return {"skipped": reason, "tables_bytes": tables}
        extra["background_stats"] = attach_smf_memory(model, cfg, selector)
        out.update(tables_bytes=tables, layers=memory_layer_indices(model), slots=n_keys**2)
    module = build_method(Target.from_node(cfg.method, "method"), model, tok, **extra)
    if spec.get("update") == "dense_masked":
        use_dense_masked_update(module)
    kwargs = trainer_kwargs(cfg, module, spec["precision"])
    timer = StepTimer()
    batch = token_batch(model.config.vocab_size, s.batch, s.seq)
    loader = DataLoader([batch] * (s.warmup + s.runs), batch_size=None)
    trainer = L.Trainer(**kwargs, callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    n = s.warmup
    out.update(
        wall=timer.wall[n:],
        cpu=timer.cpu[n:],
        loss=timer.loss,
        trainable=module.trainable_params,
        steps=trainer.global_step,
    )
    return out


def attach_smf_memory(model: Any, cfg: DictConfig, selector: str = "tfidf") -> Any:
    """Attach ``cfg.memory`` to ``model``; synthetic background statistics for the selector
    and the diagnostics (as ``prepare`` gives every SMF run), None for selectors without."""
    mem_cfg = OmegaConf.to_container(cfg.memory, resolve=True)
    attach_memory(model, MemoryConfig.from_config(mem_cfg))
    if selector not in NEEDS_BACKGROUND:
        return None
    return synthetic_background([m.n_slots for m in memory_modules(model)])


def fact_setup(spec: dict[str, Any], s: Settings) -> tuple[Any, list[Any], dict[str, Any]]:
    """(method module, the stream's first batches, result fields) of a fact-step config;
    the module is None when the config is skipped (``skipped`` in the fields)."""
    cfg = compose_train(s, fact_overrides(spec, s))
    model, tok = bench_model(s.model)
    batches = fact_batches(cfg, tok, s.warmup + s.fact_runs)
    out: dict[str, Any] = {**batch_shape(batches[s.warmup:]), "cfg": cfg}
    extra: dict[str, Any] = {}
    if spec["method"] == "smf":
        n_keys = spec["n_keys"]
        n_layers = len(MemoryConfig.from_config(
            OmegaConf.to_container(cfg.memory, resolve=True)  # type: ignore[arg-type]
        ).resolve_layers(model.config.num_hidden_layers))
        dim = cfg.memory.v_dim or model.config.hidden_size
        tables = table_bytes(n_layers, n_keys, dim)
        out.update(tables_bytes=tables, slots=n_keys**2)
        reason = enough_memory(tables + 3 * GiB, False, s)
        if reason:
            return None, batches, {**out, "skipped": reason}
        extra["background_stats"] = attach_smf_memory(model, cfg, cfg.method.selector)
        out["layers"] = memory_layer_indices(model)
    module = build_method(Target.from_node(cfg.method, "method"), model, tok, **extra)
    return module, batches, out


def fit_batches(module: Any, cfg: DictConfig, batches: list[Any], precision: str,
                callback: L.Callback) -> L.Trainer:
    """One Lightning fit over exactly ``batches`` (one optimizer step each)."""
    trainer = L.Trainer(**trainer_kwargs(cfg, module, precision), callbacks=[callback])
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return trainer


def child_facts(spec: dict[str, Any], s: Settings) -> dict[str, Any]:
    """One fact step (real phrasings of one fact, empty memory) of SMF / LoRA / full."""
    module, batches, out = fact_setup(spec, s)
    cfg = out.pop("cfg")
    if module is None:
        return out
    timer = StepTimer()
    trainer = fit_batches(module, cfg, batches, spec["precision"], timer)
    n = s.warmup
    out.update(wall=timer.wall[n:], cpu=timer.cpu[n:], loss=timer.loss,
               trainable=module.trainable_params, steps=trainer.global_step)
    return out


def child_phases(spec: dict[str, Any], s: Settings) -> dict[str, Any]:
    """The SMF fact step split into phases (PhaseClock), then each phase's floor."""
    module, batches, out = fact_setup(spec, s)
    cfg = out.pop("cfg")
    if module is None:
        return out
    clock = PhaseClock()
    instrument_smf(module, clock)
    steps = PhaseSteps(clock)
    fit_batches(module, cfg, batches, spec["precision"], steps)
    timed = steps.steps[s.warmup:]
    floors = measure_floors(module, batches[s.warmup:], spec["precision"], s.fact_top_t)
    out.update(wall=[st["wall"] for st in timed], phases=phase_medians(timed),
               floors={k: statistics.median(v) for k, v in floors.items()})
    return out


def child_update(spec: dict[str, Any], s: Settings) -> dict[str, Any]:
    """One optimizer step on one value table (bench_sparse_update's case, "same reads")."""
    n_rows, dim, small = spec["n_rows"], s.update_dim, s.small_keys**2
    if s.update_threads:
        torch.set_num_threads(s.update_threads)
    heads, knn = 4, 16
    tables = n_rows * dim * 4
    dense = spec["optimizer"] == "dense"
    reason = enough_memory((7 if dense else 2) * tables + GiB, dense, s)
    if reason:
        return {"skipped": reason, "tables_bytes": tables}
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, small, (s.batch * s.seq * heads, knn), generator=gen)
    case = make_case("t", n_rows, idx * (n_rows // small), dim, min(s.top_t, small))
    make_opt = {
        "sgd": lambda p: RowSparseSGD([p], lr=1e-3, momentum=0.9),
        "adam": lambda p: RowSparseAdam([p], lr=1e-3),
        "dense": lambda p: DenseMaskedAdamW([p], lr=1e-3),
    }[spec["optimizer"]]
    ms, state = time_interleaved(make_opt, [case], s.runs, warmup=max(s.warmup, 1))["t"]
    return {"median_s": ms / 1e3, "state_bytes": state, "tables_bytes": tables}


def child_eval(spec: dict[str, Any], s: Settings) -> dict[str, Any]:
    probe, scorer, precision = spec["probe"], spec["scorer"], spec["precision"]
    model, tok = bench_model(s.model)
    rows = probe_rows(probe, s.eval_rows[probe], s.data_dir)
    warm_rows = probe_rows("medmcqa", 2, s.data_dir)
    bs = s.eval_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if scorer == "smfexp":
            cfg = smfexp_config(bs, precision, s.data_dir)
            warm_up(model, tok, folder, warm_rows, bs, (precision,), harness=False)

            def once() -> tuple[float, float]:
                return time_smfexp(probe, model, tok, rows, cfg)
        else:
            warm_up(model, tok, folder, warm_rows, bs, (), harness=True)
            task = write_task(folder, f"bench_{probe}", probe, rows)

            def once() -> tuple[float, float]:
                return time_lm_eval(probe, model, tok, folder, task, bs)

        wall, cpu, value = [], [], float("nan")
        for _ in range(s.eval_runs):
            c0 = time.process_time()
            t, value = once()
            wall.append(t)
            cpu.append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu, "value": value, "rows": len(rows), "metric": METRIC[probe][0]}


CHILDREN: dict[str, Callable[[dict[str, Any], Settings], dict[str, Any]]] = {
    "idle": child_idle,
    "forward": child_forward,
    "train": child_train,
    "scaling": child_train,
    "update": child_update,
    "eval": child_eval,
    "facts": child_facts,
    "phases": child_phases,
}


def _child_main(spec: dict[str, Any], s: Settings, conn: Any, log: str | None) -> None:
    if log:  # the child's own output (library chatter) goes to its log file
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    try:
        quiet_libraries()
        if s.threads:
            torch.set_num_threads(s.threads)
        torch.manual_seed(0)
        out = CHILDREN[spec["section"]](spec, s)
        out["threads"] = torch.get_num_threads()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        out = {"error": f"{type(exc).__name__}: {first}", "traceback": traceback.format_exc()}
    out["peak_rss"] = peak_rss_bytes()
    conn.send(out)
    conn.close()


# =========================================================================== parent
def run_isolated(spec: dict[str, Any], s: Settings, log: str | None = None) -> dict[str, Any]:
    """Run one configuration in a child process; returns its result (or error/skipped)."""
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(spec, s, send, log))
    t0 = time.perf_counter()
    proc.start()
    send.close()
    result: dict[str, Any] | None = None
    try:
        if recv.poll(s.timeout):
            result = recv.recv()
        else:
            proc.kill()  # our own child, by its handle
            result = {"error": f"timed out after {s.timeout:.0f} s"}
    except EOFError:
        pass
    proc.join()
    if result is None:
        result = {"error": f"child died (exit code {proc.exitcode}; out of memory?)"}
    result["elapsed"] = time.perf_counter() - t0
    return result


def med(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def progress_line(spec: dict[str, Any], r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED: {r['error']}"
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    parts = []
    if r.get("wall"):
        cpu = f" (CPU {med(r['cpu']):.4g} s)" if r.get("cpu") else ""
        parts.append(f"median {med(r['wall']):.4g} s{cpu}")
    if r.get("median_s") is not None:
        parts.append(f"median {r['median_s'] * 1e3:.4g} ms")
    if r.get("value") is not None:
        parts.append(f"{r.get('metric')} {r['value']:.4g}")
    parts.append(f"peak RSS {r['peak_rss'] / GiB:.2f} GiB")
    return ", ".join(parts)
