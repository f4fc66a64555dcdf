"""Benchmark suite (issue #8): forward, training step, SMF scaling, peak memory, evaluation.

    python benchmarks/suite.py [--quick] [--out BENCHMARKS.md] [--runs 3]
                               [--only forward,train,scaling,eval] [--json RAW.json]
                               [--medmcqa 200 --triviaqa 200 --wikitext 5] [--threads N]
                               [--dense-large]

(``make bench``; ``make bench BENCH_ARGS=--quick`` for the smoke test.) ``--help`` lists the
rest (batch, sequence length, n_keys pair, eval batch size and repetitions, timeouts).

Writes one Markdown file (atomically): the machine (CPU model, cores, bf16/AMX flags, library
versions, date), the exact command, and one table per section with median seconds, ratios and
peak RSS. Progress goes to stdout.

How it measures:

* Every configuration runs in its own child process, forked from this one after the heavy
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
* Memories are attached fresh (random init, no retrofit: the cost does not depend on the
  values); tfidf/kl read synthetic random background counts, so no background pass runs.
* ``--quick``: the tiny random model (``conf/model/tiny.yaml``), a small batch, small tables
  and a few eval rows - a smoke test of the suite (about a minute), not a measurement.
"""

# ruff: noqa: E402 - the imports below need sys.path set up first
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import logging
import multiprocessing as mp
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
from bench_sparse_update import _available_gb, make_case, time_interleaved
from dense_masked import DenseMaskedAdamW
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from smfexp.eval.reference import write_task
from smfexp.memory import MemoryConfig, attach_memory, memory_layer_indices, memory_modules
from smfexp.models.loading import ModelSpec, load_model
from smfexp.runner import build_method
from smfexp.smf.background import BackgroundStats
from smfexp.smf.selectors import NEEDS_BACKGROUND
from smfexp.smf.sparse_optim import RowSparseAdam, RowSparseSGD
from smfexp.utils.io import atomic_write_json, atomic_write_text
from smfexp.utils.precision import autocast_for, cpu_has_fast_bf16, resolve_precision

CONF = ROOT / "conf"
SECTIONS = ("forward", "train", "scaling", "eval")
SELECTORS = ("tfidf", "kl", "random", "all")
PRECISIONS = ("32-true", "bf16-mixed")  # Lightning names; shown as fp32 / bf16
SHORT = {"32-true": "fp32", "bf16-mixed": "bf16"}
EVAL_PROBES = ("medmcqa", "triviaqa", "wikitext")
EVAL_MODES = (("smfexp", "fp32"), ("smfexp", "bf16"), ("lm-eval", "fp32"))
GiB = 2**30

# issue #5 / #8 targets
T_SMF_BF16_VS_FULL_FP32 = 0.35
T_SMF_VS_FULL = 0.6
T_SMF_VS_LORA = 0.9
T_SCALING = 1.2
T_RSS_HEADROOM_GB = 2.0
T_MEDMCQA_POINTS = 1.0
T_WIKITEXT_REL = 0.01
T_EVAL_SPEEDUP = 3.0


# =========================================================================== settings
@dataclass
class Settings:
    """Everything a child needs; ``--quick`` and the full run differ only here."""

    quick: bool
    model: str
    batch: int
    seq: int
    runs: int
    warmup: int
    small_keys: int
    large_keys: int
    update_dim: int
    top_t: int
    scaling_precision: str
    eval_rows: dict[str, int] = field(default_factory=dict)
    eval_batch_size: int = 16
    eval_runs: int = 3
    threads: int = 0
    update_threads: int = 1
    dense_large: bool = False
    data_dir: str | None = None
    timeout: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, small sizes (smoke test)")
    p.add_argument("--out", default="BENCHMARKS.md", help="Markdown output (written atomically)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--runs", type=int, default=3, help="timed repetitions per config (>= 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (2)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--model", default=None, help="conf/model entry (default smollm2-135m)")
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (256)")
    p.add_argument("--small-keys", type=int, default=None, help="n_keys of the default (128)")
    p.add_argument("--large-keys", type=int, default=None, help="n_keys of the large (1024)")
    p.add_argument(
        "--scaling-precision",
        default="auto",
        help="precision of the scaling steps (auto: bf16-mixed if the CPU has it)",
    )
    p.add_argument("--medmcqa", type=int, default=None, help="eval rows (200)")
    p.add_argument("--triviaqa", type=int, default=None, help="eval rows (64)")
    p.add_argument("--wikitext", type=int, default=None, help="eval documents (3)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="smfexp/lm_eval batch (16)")
    p.add_argument("--eval-runs", type=int, default=None, help="eval repetitions (--runs)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (0: torch's default; --quick: 1, steadier on shared cores)",
    )
    p.add_argument(
        "--update-threads",
        type=int,
        default=1,
        help="torch threads for the update-alone timings (1, as bench_sparse_update.py: "
        "ms-scale ops on shared cores stall on OpenMP barriers)",
    )
    p.add_argument(
        "--dense-large",
        action="store_true",
        help="also run dense_masked configs that need > 4 GiB (1M slots: ~16 GiB for one table)",
    )
    p.add_argument("--data-dir", default=None, help="offline data ($SMFEXP_DATA_DIR, ./data)")
    p.add_argument("--logs", default=None, help="keep each child's output here (default: temp)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    args = p.parse_args(argv)
    if args.runs < 3 or (args.eval_runs is not None and args.eval_runs < 3):
        p.error("medians need >= 3 repetitions (--runs / --eval-runs)")
    bad = sorted(set(args.only.split(",")) - set(SECTIONS))
    if bad:
        p.error(f"--only: unknown section(s) {bad}; valid: {','.join(SECTIONS)}")
    return args


def make_settings(args: argparse.Namespace) -> Settings:
    q = args.quick

    def pick(value: Any, quick: Any, full: Any) -> Any:
        return value if value is not None else (quick if q else full)

    precision = resolve_precision(args.scaling_precision, "cpu")
    if precision not in PRECISIONS:
        raise SystemExit(f"--scaling-precision: use auto, 32-true or bf16-mixed, not {precision}")
    return Settings(
        quick=q,
        model=pick(args.model, "tiny", "smollm2-135m"),
        batch=pick(args.batch, 2, 8),
        seq=pick(args.seq, 64, 256),
        runs=args.runs,
        warmup=pick(args.warmup, 1, 2),
        small_keys=pick(args.small_keys, 32, 128),
        large_keys=pick(args.large_keys, 256, 1024),
        update_dim=64 if q else 576,
        top_t=512,
        scaling_precision=precision,
        eval_rows={
            "medmcqa": pick(args.medmcqa, 8, 200),
            "triviaqa": pick(args.triviaqa, 1, 64),
            "wikitext": pick(args.wikitext, 1, 3),
        },
        eval_batch_size=pick(args.eval_batch_size, 8, 16),
        eval_runs=args.eval_runs or args.runs,
        threads=pick(args.threads, 1, 0),
        update_threads=args.update_threads,
        dense_large=args.dense_large,
        data_dir=args.data_dir,
        timeout=args.timeout,
    )


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


def child_train(spec: dict[str, Any], s: Settings) -> dict[str, Any]:
    method, selector = spec["method"], spec.get("selector") or "tfidf"
    n_keys = spec.get("n_keys", s.small_keys)
    overrides = [f"method={method}", f"selector={selector}", f"memory.n_keys={n_keys}"]
    if spec.get("update") == "row_sparse+ckpt":  # activations recomputed in backward
        overrides.append("method.gradient_checkpointing=true")
    if spec.get("optimizer"):
        overrides.append(f"method.optimizer={spec['optimizer']}")
    cfg = compose_train(s, overrides)
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
        mem_cfg = OmegaConf.to_container(cfg.memory, resolve=True)
        attach_memory(model, MemoryConfig.from_config(mem_cfg))
        if selector in NEEDS_BACKGROUND:
            extra["background"] = synthetic_background([m.n_slots for m in memory_modules(model)])
        out.update(tables_bytes=tables, layers=memory_layer_indices(model), slots=n_keys**2)
    module = build_method(cfg, model, tok, **extra)
    if spec.get("update") == "dense_masked":
        use_dense_masked_update(module)
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(kwargs, dict)
    kwargs.update(
        precision=spec["precision"],
        max_epochs=1,
        max_steps=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    kwargs.update(module.trainer_settings())  # as runner.train: SMF accumulates and clips itself
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
        parts.append(f"median {med(r['wall']):.4g} s (CPU {med(r['cpu']):.4g} s)")
    if r.get("median_s") is not None:
        parts.append(f"median {r['median_s'] * 1e3:.4g} ms")
    if r.get("value") is not None:
        parts.append(f"{r.get('metric')} {r['value']:.4g}")
    parts.append(f"peak RSS {r['peak_rss'] / GiB:.2f} GiB")
    return ", ".join(parts)


def plan(sections: list[str], s: Settings) -> list[dict[str, Any]]:
    """Every configuration, in run order (each gets a unique ``id``)."""
    specs: list[dict[str, Any]] = [{"section": "idle", "id": "idle", "label": "idle child"}]
    if "forward" in sections:
        for prec in PRECISIONS:
            for memory in (False, True):
                name = "retrofitted" if memory else "base"
                specs.append(
                    {
                        "section": "forward",
                        "id": f"forward/{name}/{SHORT[prec]}",
                        "label": f"{name} {SHORT[prec]}",
                        "memory": memory,
                        "precision": prec,
                    }
                )
    if "train" in sections:
        for prec in PRECISIONS:
            for method, selector in [
                *(("smf", sel) for sel in SELECTORS),
                ("lora", None),
                ("full", None),
            ]:
                name = f"{method}/{selector}" if selector else method
                specs.append(
                    {
                        "section": "train",
                        "id": f"train/{name}/{SHORT[prec]}",
                        "label": f"{name} {SHORT[prec]}",
                        "method": method,
                        "selector": selector,
                        "precision": prec,
                    }
                )
    if "scaling" in sections:
        prec = s.scaling_precision
        for update, opt in (("row_sparse", "sgd"), ("row_sparse", "adam"),
                            ("row_sparse+ckpt", "sgd"), ("dense_masked", None)):
            for keys in (s.small_keys, s.large_keys):
                tag = f"{update}/{opt or 'adamw'}/{keys}"
                specs.append(
                    {
                        "section": "scaling",
                        "id": f"scaling/{tag}",
                        "label": tag,
                        "method": "smf",
                        "selector": "tfidf",
                        "precision": prec,
                        "n_keys": keys,
                        "update": update,
                        "optimizer": opt,
                    }
                )
        for opt in ("sgd", "adam", "dense"):
            for keys in (s.small_keys, s.large_keys):
                specs.append(
                    {
                        "section": "update",
                        "id": f"update/{opt}/{keys}",
                        "label": f"update {opt} {keys**2} rows",
                        "optimizer": opt,
                        "n_keys": keys,
                        "n_rows": keys**2,
                    }
                )
    if "eval" in sections:
        for probe in EVAL_PROBES:
            for scorer, prec in EVAL_MODES:
                specs.append(
                    {
                        "section": "eval",
                        "id": f"eval/{probe}/{scorer}/{prec}",
                        "label": f"{probe} {scorer} {prec}",
                        "probe": probe,
                        "scorer": scorer,
                        "precision": prec,
                    }
                )
    return specs


# =========================================================================== machine
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def mem_total_gb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    flags = cpu_flags()
    load = "n/a"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "flags": {f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
        "fast_bf16": cpu_has_fast_bf16(),
        "mem_total_gb": mem_total_gb(),
        "mem_available_gb": _available_gb(),
        "loadavg": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            p: version(p) for p in ("torch", "transformers", "lightning", "peft", "lm_eval")
        },
    }


# =========================================================================== markdown
def fs(x: float | None) -> str:
    """Seconds (4 significant digits)."""
    return "n/a" if x is None else f"{x:.4g}"


def fx(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}x"


def fgb(b: float | None) -> str:
    return "n/a" if b is None else f"{b / GiB:.2f}"


def ok(value: float | None, good: bool) -> str:
    return "n/a" if value is None else ("yes" if good else "**no**")


def status(r: dict[str, Any] | None) -> str | None:
    """A cell text for a config that has no timings."""
    if r is None:
        return "not run"
    if "error" in r:
        return "failed"
    if "skipped" in r:
        return "skipped"
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def table(head: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or ("---|" + "---:|" * (len(head) - 1))
    out = ["| " + " | ".join(head) + " |", "|" + align]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


class Report:
    def __init__(self, s: Settings, results: dict[str, dict[str, Any]]) -> None:
        self.s, self.res = s, results

    def r(self, key: str) -> dict[str, Any] | None:
        return self.res.get(key)

    def wall(self, key: str) -> float | None:
        r = self.r(key)
        return med(r.get("wall")) if r and not status(r) else None

    def cpu(self, key: str) -> float | None:
        r = self.r(key)
        return med(r.get("cpu")) if r and not status(r) else None

    def rss(self, key: str) -> int | None:
        r = self.r(key)
        return r.get("peak_rss") if r and "error" not in r and "skipped" not in r else None

    def cells(self, key: str) -> list[str]:
        """median wall, median CPU (or the status)."""
        st = status(self.r(key))
        return [st, st] if st else [fs(self.wall(key)), fs(self.cpu(key))]

    # ---------------------------------------------------------------- sections
    def forward(self) -> list[str]:
        s = self.s
        layers = next(
            (
                r.get("layers")
                for k, r in self.res.items()
                if k.startswith("forward/retrofitted") and r.get("layers")
            ),
            "?",
        )
        out = [
            "## 1. Forward pass",
            "",
            f"Inference forward (`torch.inference_mode`, logits included) of a {s.batch}x"
            f"{s.seq}-token batch. Retrofitted = `conf/memory/default.yaml` memories "
            f"(n_keys {s.small_keys}: {s.small_keys**2:,} slots/layer) at blocks {layers}. "
            f"bf16 = `torch.autocast(bfloat16)` over fp32 weights.",
            "",
        ]
        rows = []
        for prec in ("fp32", "bf16"):
            for name in ("base", "retrofitted"):
                key = f"forward/{name}/{prec}"
                base = self.wall(f"forward/base/{prec}")
                fp32 = self.wall(f"forward/{name}/fp32")
                rows.append(
                    [
                        name,
                        prec,
                        *self.cells(key),
                        fx(ratio(self.wall(key), base)),
                        fx(ratio(self.wall(key), fp32)),
                        fgb(self.rss(key)),
                    ]
                )
        out += table(
            [
                "model",
                "precision",
                "median wall (s)",
                "median CPU (s)",
                "vs base (same precision)",
                "vs fp32 (same model)",
                "peak RSS (GiB)",
            ],
            rows,
            "---|---|" + "---:|" * 5,
        )
        return out

    def train(self) -> list[str]:
        s = self.s
        out = [
            "## 2. Training step",
            "",
            f"One optimizer step (forward + backward + update) on the same {s.batch}x{s.seq}"
            f"-token batch through the real method modules and a Lightning Trainer "
            f"(`conf/method/*.yaml`, grad_accum 1; SMF: `conf/memory/default.yaml`, top_t "
            f"512, RowSparseSGD; LoRA: rank 16 on q,k,v,o,gate,up,down; full: AdamW). "
            f"bf16 = Lightning `bf16-mixed` (fp32 master weights). tfidf/kl read "
            f"**synthetic random background counts** (no background pass).",
            "",
        ]
        rows = []
        for prec in ("fp32", "bf16"):
            for name in [*(f"smf/{sel}" for sel in SELECTORS), "lora", "full"]:
                key = f"train/{name}/{prec}"
                r = self.r(key) or {}
                w = self.wall(key)
                rows.append(
                    [
                        name,
                        prec,
                        f"{r['trainable']:,}" if "trainable" in r else "n/a",
                        *self.cells(key),
                        fx(ratio(w, self.wall(f"train/full/{prec}"))),
                        fx(ratio(w, self.wall(f"train/lora/{prec}"))),
                        fx(ratio(w, self.wall("train/full/fp32"))),
                        fgb(self.rss(key)),
                    ]
                )
        out += table(
            [
                "method",
                "precision",
                "trainable params",
                "median wall (s)",
                "median CPU (s)",
                "vs full (same precision)",
                "vs LoRA (same precision)",
                "vs full fp32",
                "peak RSS (GiB)",
            ],
            rows,
            "---|---|" + "---:|" * 7,
        )
        out += ["Targets (issue #5), ratios of median wall times:", ""]
        checks = [
            ("bf16 SMF step / fp32 full step", "bf16", "full", "fp32", T_SMF_BF16_VS_FULL_FP32),
            ("SMF / full, fp32", "fp32", "full", "fp32", T_SMF_VS_FULL),
            ("SMF / full, bf16", "bf16", "full", "bf16", T_SMF_VS_FULL),
            ("SMF / LoRA, fp32", "fp32", "lora", "fp32", T_SMF_VS_LORA),
            ("SMF / LoRA, bf16", "bf16", "lora", "bf16", T_SMF_VS_LORA),
        ]
        rows = []
        for label, p_smf, ref, p_ref, target in checks:
            cells = [label]
            for sel in SELECTORS:
                x = ratio(self.wall(f"train/smf/{sel}/{p_smf}"), self.wall(f"train/{ref}/{p_ref}"))
                cells.append("n/a" if x is None else f"{x:.3f}x ({ok(x, x <= target)})")
            rows.append([*cells, f"<= {target}"])
        out += table(
            ["ratio", *(f"SMF {sel}" for sel in SELECTORS), "target"],
            rows,
            "---|" + "---:|" * (len(SELECTORS) + 1),
        )
        return out

    def scaling(self) -> list[str]:
        s = self.s
        lo, hi = s.small_keys, s.large_keys
        out = [
            "## 3. SMF scaling",
            "",
            f"Does the SMF step cost depend on the table size? n_keys {lo} ({lo**2:,} slots"
            f"/layer) vs {hi} ({hi**2:,} slots/layer). Whole SMF training steps (tfidf, "
            f"synthetic background, {SHORT[s.scaling_precision]}, same batch as section 2) "
            f"with the row-sparse value optimizers (SGD is the method default; "
            f"`row_sparse+ckpt` = SGD with `method.gradient_checkpointing=true`, activations "
            f"recomputed in backward) and with the flawed `dense_masked` update "
            f"(`DenseMaskedAdamW`, what reference implementations do). Value tables = all "
            f"memory layers, fp32.",
            "",
        ]
        rows = []
        for update, opt in (
            ("row_sparse", "sgd"),
            ("row_sparse", "adam"),
            ("row_sparse+ckpt", "sgd"),
            ("dense_masked", "adamw"),
        ):
            for keys in (lo, hi):
                key = f"scaling/{update}/{opt}/{keys}"
                r = self.r(key) or {}
                tables = r.get("tables_bytes")
                rss = self.rss(key)
                rows.append(
                    [
                        update,
                        opt,
                        f"{keys} ({keys**2:,})",
                        fgb(tables),
                        *self.cells(key),
                        fx(ratio(self.wall(key), self.wall(f"scaling/{update}/{opt}/{lo}"))),
                        fgb(rss),
                        fgb(None if rss is None or tables is None else rss - tables),
                    ]
                )
        out += table(
            [
                "update",
                "optimizer",
                "n_keys (slots/layer)",
                "value tables (GiB)",
                "median wall (s)",
                "median CPU (s)",
                f"vs n_keys {lo}",
                "peak RSS (GiB)",
                "peak RSS - tables (GiB)",
            ],
            rows,
            "---|---|" + "---:|" * 7,
        )
        out += [
            f"The update alone (`bench_sparse_update.py`'s case: one table, v_dim "
            f"{s.update_dim}, real sparse gradient of {s.batch}x{s.seq} tokens x 4 heads x "
            f"16 knn reads spread over the table, t = {min(s.top_t, lo**2)} most-read rows "
            f"selected), median of {s.runs} `step()` calls after {max(s.warmup, 1)} warm-up, "
            f"{s.update_threads or 'default'} torch thread(s):",
            "",
        ]
        rows = []
        for opt, name in (
            ("sgd", "RowSparseSGD (momentum 0.9)"),
            ("adam", "RowSparseAdam"),
            ("dense", "DenseMaskedAdamW (dense_masked)"),
        ):
            for keys in (lo, hi):
                key = f"update/{opt}/{keys}"
                r = self.r(key) or {}
                st = status(self.r(key))
                t = r.get("median_s") if not st else None
                t_lo = (self.r(f"update/{opt}/{lo}") or {}).get("median_s")
                rows.append(
                    [
                        name,
                        f"{keys**2:,}",
                        fgb(r.get("tables_bytes")),
                        st or f"{t * 1e3:.4g}",
                        fx(ratio(t, t_lo)),
                        st or f"{r['state_bytes'] / 2**20:.1f}",
                        fgb(self.rss(key)),
                    ]
                )
        out += table(
            [
                "optimizer",
                "rows",
                "table (GiB)",
                "median step (ms)",
                f"vs {lo**2:,} rows",
                "optimizer state (MiB)",
                "peak RSS (GiB)",
            ],
            rows,
            "---|" + "---:|" * 6,
        )
        rows = []
        for label, key_lo, key_hi, val in (
            (
                "SMF step, row-sparse SGD",
                f"scaling/row_sparse/sgd/{lo}",
                f"scaling/row_sparse/sgd/{hi}",
                self.wall,
            ),
            (
                "SMF step, row-sparse Adam",
                f"scaling/row_sparse/adam/{lo}",
                f"scaling/row_sparse/adam/{hi}",
                self.wall,
            ),
            (
                "update alone, RowSparseSGD",
                f"update/sgd/{lo}",
                f"update/sgd/{hi}",
                lambda k: (self.r(k) or {}).get("median_s"),
            ),
            (
                "update alone, RowSparseAdam",
                f"update/adam/{lo}",
                f"update/adam/{hi}",
                lambda k: (self.r(k) or {}).get("median_s"),
            ),
        ):
            x = ratio(val(key_hi), val(key_lo))
            rows.append(
                [
                    f"{label}: {hi**2:,} / {lo**2:,} slots",
                    fx(x),
                    f"<= {T_SCALING}",
                    ok(x, x is not None and x <= T_SCALING),
                ]
            )
        out += table(["target (issue #5)", "value", "target", "ok"], rows, "---|---:|---:|---|")
        return out

    def memory(self) -> list[str]:
        s = self.s
        hi = s.large_keys
        out = [
            "## 4. Peak memory (RSS)",
            "",
            "Every table above has each configuration's peak RSS (its own child process; "
            "`getrusage(RUSAGE_SELF).ru_maxrss`, imported libraries included). An idle "
            "child (imports only) is the floor:",
            "",
        ]
        rows = [
            [
                "idle child (the suite's imports only)",
                "n/a",
                fgb(self.rss("idle")),
                "n/a",
                "n/a",
                "n/a",
            ]
        ]
        for update, opt in (
            ("row_sparse", "sgd"),
            ("row_sparse", "adam"),
            ("row_sparse+ckpt", "sgd"),
            ("dense_masked", "adamw"),
        ):
            key = f"scaling/{update}/{opt}/{hi}"
            r = self.r(key)
            if r is None:
                continue
            tables = r.get("tables_bytes")
            rss = self.rss(key)
            extra = None if rss is None or tables is None else rss - tables
            cell = status(r) or fgb(rss)
            rows.append(
                [
                    f"SMF step, {update} {opt}, {hi**2:,} slots/layer",
                    fgb(tables),
                    cell,
                    fgb(extra),
                    f"<= tables + {T_RSS_HEADROOM_GB:g} GiB",
                    ok(extra, extra is not None and extra <= T_RSS_HEADROOM_GB * GiB),
                ]
            )
        out += table(
            [
                "configuration",
                "value tables (GiB)",
                "peak RSS (GiB)",
                "peak RSS - tables (GiB)",
                "target (issue #5)",
                "ok",
            ],
            rows,
            "---|---:|---:|---:|---:|---|",
        )
        peaks = []
        for sec in ("forward", "train", "scaling", "update", "eval"):
            keyed = [(self.rss(k), k) for k in self.res if k.startswith(sec + "/")]
            keyed = [(v, k) for v, k in keyed if v is not None]
            if keyed:
                v, k = max(keyed)
                peaks.append([sec, k, fgb(v)])
        if peaks:
            out += ["Largest peak per section:", ""]
            out += table(["section", "configuration", "peak RSS (GiB)"], peaks, "---|---|---:|")
        return out

    def eval(self) -> list[str]:
        s = self.s
        out = [
            "## 5. Evaluation",
            "",
            f"Harness protocol, same model object and rows for every scorer: smfexp "
            f"`score_probe` (fp32, and bf16 = `EvalConfig.precision`, autocast) vs "
            f"lm-evaluation-harness `simple_evaluate` (fp32), batch {s.eval_batch_size} "
            f"(lm_eval WikiText: batch 1). Rows: MedMCQA {s.eval_rows['medmcqa']}, TriviaQA "
            f"{s.eval_rows['triviaqa']}, WikiText {s.eval_rows['wikitext']} documents. "
            f"Median of {s.eval_runs} after a 2-row warm-up.",
            "",
        ]
        rows = []
        totals: dict[str, float | None] = {}
        for scorer, prec in EVAL_MODES:
            tag = f"{scorer}/{prec}"
            walls = [self.wall(f"eval/{p}/{tag}") for p in EVAL_PROBES]
            totals[tag] = None if None in walls else sum(walls)  # type: ignore[arg-type]
        for probe in EVAL_PROBES:
            lm = self.wall(f"eval/{probe}/lm-eval/fp32")
            for scorer, prec in EVAL_MODES:
                key = f"eval/{probe}/{scorer}/{prec}"
                r = self.r(key) or {}
                value = f"{r['value']:.6g}" if not status(self.r(key)) else "n/a"
                rows.append(
                    [
                        probe,
                        str(r.get("rows", "n/a")),
                        scorer,
                        prec,
                        *self.cells(key),
                        fx(ratio(lm, self.wall(key))),
                        METRIC[probe][0],
                        value,
                        fgb(self.rss(key)),
                    ]
                )
        for scorer, prec in EVAL_MODES:
            tag = f"{scorer}/{prec}"
            rows.append(
                [
                    "**all probes**",
                    "",
                    scorer,
                    prec,
                    fs(totals[tag]),
                    "",
                    fx(ratio(totals["lm-eval/fp32"], totals[tag])),
                    "",
                    "",
                    "",
                ]
            )
        out += table(
            [
                "probe",
                "rows",
                "scorer",
                "precision",
                "median wall (s)",
                "median CPU (s)",
                "lm-eval fp32 / this",
                "metric",
                "value",
                "peak RSS (GiB)",
            ],
            rows,
            "---|---:|---|---|---:|---:|---:|---|---:|---:|",
        )

        def val(probe: str, scorer: str, prec: str) -> float | None:
            r = self.r(f"eval/{probe}/{scorer}/{prec}")
            return None if status(r) else r["value"]  # type: ignore[index]

        a32, a16 = val("medmcqa", "smfexp", "fp32"), val("medmcqa", "smfexp", "bf16")
        w32, w16 = val("wikitext", "smfexp", "fp32"), val("wikitext", "smfexp", "bf16")
        acc_pts = None if a32 is None or a16 is None else 100 * (a16 - a32)
        wiki_rel = None if w32 is None or w16 is None else (w16 - w32) / w32
        speed = ratio(totals["lm-eval/fp32"], totals["smfexp/bf16"])
        speed32 = ratio(totals["lm-eval/fp32"], totals["smfexp/fp32"])
        rows = [
            [
                "MedMCQA accuracy, bf16 - fp32 (points)",
                "n/a" if acc_pts is None else f"{acc_pts:+.2f}",
                f"within +-{T_MEDMCQA_POINTS:g}",
                ok(acc_pts, acc_pts is not None and abs(acc_pts) <= T_MEDMCQA_POINTS),
            ],
            [
                "WikiText word perplexity, (bf16 - fp32) / fp32",
                "n/a" if wiki_rel is None else f"{100 * wiki_rel:+.3f}%",
                f"within +-{100 * T_WIKITEXT_REL:g}%",
                ok(wiki_rel, wiki_rel is not None and abs(wiki_rel) <= T_WIKITEXT_REL),
            ],
            [
                "all probes: lm-eval fp32 time / smfexp bf16 time",
                fx(speed),
                f">= {T_EVAL_SPEEDUP:g}x",
                ok(speed, speed is not None and speed >= T_EVAL_SPEEDUP),
            ],
            ["all probes: lm-eval fp32 time / smfexp fp32 time", fx(speed32), "-", "-"],
        ]
        out += ["bf16 drift and speed (targets, issue #5):", ""]
        out += table(["check", "value", "target", "ok"], rows, "---|---:|---:|---|")
        return out

    # ---------------------------------------------------------------- whole file
    def render(
        self,
        machine: dict[str, Any],
        command: str,
        sections: list[str],
        started: datetime.datetime,
        seconds: float,
    ) -> str:
        s = self.s
        threads = next((r["threads"] for r in self.res.values() if "threads" in r), "n/a")
        flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["flags"].items())
        versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        failures = [(k, r) for k, r in self.res.items() if "error" in r]
        skipped = [(k, r) for k, r in self.res.items() if "skipped" in r]
        lines = [
            "# smfexp benchmarks",
            "",
            f"Generated {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min by",
            "",
            f"    {command}",
            "",
        ]
        if s.quick:
            lines += [
                "> **--quick**: tiny random model, small batch and tables, a few eval rows. "
                "A smoke test of the suite: the numbers and ratios say nothing about the "
                "targets.",
                "",
            ]
        lines += ["## Machine", ""]
        lines += table(
            ["", ""],
            [
                ["CPU", machine["cpu"]],
                [
                    "cores",
                    f"{machine['cpus']} logical CPUs ({machine['affinity']} usable), torch "
                    f"threads {threads}",
                ],
                [
                    "bf16 / AMX",
                    f"{flags}; torch fast-bf16 path: "
                    f"{'yes' if machine['fast_bf16'] else 'no'} (`precision: auto` = "
                    f"{resolve_precision('auto', 'cpu')})",
                ],
                [
                    "memory",
                    f"{machine['mem_total_gb']:.1f} GiB, "
                    f"{machine['mem_available_gb']:.1f} GiB available at start",
                ],
                ["load average at start", str(machine["loadavg"])],
                ["software", f"Python {machine['python']}, {versions}"],
                ["OS", machine["platform"]],
                ["model", f"`{s.model}` (conf/model/{s.model}.yaml)"],
            ],
            "---|---|",
        )
        lines += [
            "## Method",
            "",
            "- Each configuration runs in its own child process (forked from the suite "
            "after imports, before any tensor work): peak RSS is per configuration.",
            f"- Timings: median of {s.runs} repetitions after {s.warmup} warm-up "
            f"(evaluation: {s.eval_runs}); wall = `perf_counter`, CPU = process CPU time "
            "(all threads). Ratios divide median wall times measured in this same run.",
            "- The machine may be shared: compare CPU with wall time to spot contention.",
            "",
        ]
        builders = {
            "forward": self.forward,
            "train": self.train,
            "scaling": self.scaling,
            "eval": self.eval,
        }
        for sec in SECTIONS:
            if sec in sections:
                lines += builders[sec]()
            if sec == "scaling":
                lines += self.memory()
        if failures or skipped:
            lines += ["## Failed or skipped configurations", ""]
            for k, r in failures:
                lines.append(f"- `{k}` failed: {r['error']}")
            for k, r in skipped:
                lines.append(f"- `{k}` skipped: {r['skipped']}")
            lines.append("")
        return "\n".join(lines)


# =========================================================================== main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = make_settings(args)
    sections = [x for x in SECTIONS if x in args.only.split(",")]
    command = "python benchmarks/suite.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    if "eval" in sections:  # import once here, so every forked child has it already
        import lm_eval.evaluator
        import lm_eval.models.huggingface
        import lm_eval.tasks  # noqa: F401
    machine = machine_info()
    specs = plan(sections, s)
    print(
        f"[suite] {len(specs)} configurations, sections {','.join(sections)}, model {s.model}"
        f"{' (--quick)' if s.quick else ''} -> {args.out}",
        flush=True,
    )
    logs = Path(args.logs or tempfile.mkdtemp(prefix="smfexp-suite-"))
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(specs, 1):
        print(
            f"[suite {i}/{len(specs)}] {spec['section']}: {spec['label']} ...", end=" ", flush=True
        )
        log = logs / (spec["id"].replace("/", "_") + ".log")
        results[spec["id"]] = run_isolated(spec, s, str(log))
        r = results[spec["id"]]
        print(f"{progress_line(spec, r)} [{r['elapsed']:.1f} s]", flush=True)
        if "error" in r:
            print(r.get("traceback", ""), f"(child output: {log})", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    text = Report(s, results).render(machine, command, sections, started, seconds)
    atomic_write_text(args.out, text + "\n")
    if args.json:
        atomic_write_json(
            args.json,
            {"settings": asdict(s), "machine": machine, "command": command, "results": results},
        )
    failed = [k for k, r in results.items() if "error" in r]
    if not failed and not args.logs:
        shutil.rmtree(logs, ignore_errors=True)
    print(
        f"[suite] wrote {args.out} in {seconds:.0f} s"
        f"{f'; {len(failed)} failed: ' + ', '.join(failed) if failed else ''}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
