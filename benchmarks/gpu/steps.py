"""Section 3: median training-step time and peak device memory of SMF (a small and a large
memory), LoRA and full finetuning, through the real method modules and a Lightning Trainer,
with the step-time and memory targets."""

from __future__ import annotations

import statistics
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mdtable import fgib, fnum, table

from .device import free_device_memory, random_model, synchronize
from .markdown import fint
from .plan import (
    QWEN25,
    T_LARGE_VS_SMALL,
    T_MEMORY_VS_FULL,
    T_SMF_VS_FULL,
    Budget,
    MemoryCase,
    ModelShape,
    Plan,
)
from .sections import Check, Section, log, one_line


@dataclass(frozen=True)
class StepResult:
    """One configuration's training-step measurement."""

    shape: str
    case: str
    label: str
    slots: int | None = None
    trainable: int | None = None
    median_s: float | None = None
    timed: int = 0
    peak_bytes: int | None = None
    before_bytes: int | None = None
    loss: float | None = None
    note: str | None = None  # skipped / failed: why


def step_timer(device: str) -> Any:
    """A Lightning callback timing each batch (forward, backward, update), device-synchronised."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.loss: list[float] = []
            self._t0 = 0.0

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
            synchronize(device)
            self._t0 = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Any, module: Any, out: Any, batch: Any, idx: int
        ) -> None:
            synchronize(device)
            self.wall.append(time.perf_counter() - self._t0)
            loss = out["loss"] if isinstance(out, dict) else out
            self.loss.append(float(loss) if loss is not None else float("nan"))

    return StepTimer()


def synthetic_background(n_slots: Sequence[int], device: str, n_units: int = 1000) -> Any:
    """Random df / reads per slot with the real shapes, so tfidf runs without a data pass."""
    from smfexp.smf.background import BackgroundStats

    gen = torch.Generator().manual_seed(0)
    df = [torch.randint(0, n_units + 1, (n,), generator=gen) for n in n_slots]
    reads = [d * torch.randint(1, 9, d.shape, generator=gen) for d in df]
    return BackgroundStats(df, reads, n_units, meta={"synthetic": True}).to(device)


def build_module(
    method: str, model: Any, plan: Plan, memory: MemoryCase | None, device: str
) -> Any:
    """The real smfexp method module (SMF: memory attached, tfidf on synthetic statistics)."""
    if method == "smf":
        from smfexp.memory import attach_memory, memory_modules
        from smfexp.methods.smf import SparseMemoryFinetune

        assert memory is not None
        with torch.device(device):  # the value tables are created where they train
            attach_memory(model, plan.memory_config(memory))
        background = synthetic_background([m.n_slots for m in memory_modules(model)], device)
        return SparseMemoryFinetune(
            model=model,
            tokenizer=None,
            background_stats=background,
            selector="tfidf",
            top_t=plan.top_t,
            optimizer="sgd",
            lr=1.0,
            grad_accum=1,
            grad_clip=1.0,
        )
    if method == "lora":
        from smfexp.methods.lora import LoRAFinetune

        return LoRAFinetune(model=model, tokenizer=None, lr=2e-4)
    from smfexp.methods.full import FullFinetune

    return FullFinetune(model=model, tokenizer=None, lr=5e-5)


def token_batch(vocab: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def fit_steps(module: Any, plan: Plan, vocab: int) -> Any:
    """warmup + runs optimizer steps of ``module`` in a Lightning Trainer; returns the timer."""
    import lightning as L
    from torch.utils.data import DataLoader

    timer = step_timer(plan.device)
    trainer = L.Trainer(
        accelerator=plan.accelerator,
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        max_steps=plan.warmup + plan.runs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **module.trainer_settings(),  # SMF accumulates and clips itself
        callbacks=[timer],
    )
    batch = token_batch(vocab, plan.batch, plan.seq)
    loader = DataLoader([batch] * (plan.warmup + plan.runs), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != plan.warmup + plan.runs:
        raise RuntimeError(
            f"{trainer.global_step} optimizer steps, expected {plan.warmup + plan.runs}"
        )
    return timer


def measure_case(
    plan: Plan, shape: ModelShape, method: str, memory: MemoryCase | None
) -> StepResult:
    """Build one configuration from scratch, time its steps, read its peak device memory."""
    label = method if memory is None else f"smf, {memory.slots:,} slots/layer (knn {memory.knn})"
    key = method if memory is None else f"smf-{memory.key}"
    before = free_device_memory(plan.device)
    model = random_model(shape, plan.device)
    module = build_module(method, model, plan, memory, plan.device)
    timer = fit_steps(module, plan, shape.vocab)
    peak = torch.cuda.max_memory_allocated() if plan.device == "cuda" else None
    timed = timer.wall[plan.warmup :]
    return StepResult(
        shape.key,
        key,
        label,
        memory.slots if memory else None,
        module.trainable_params,
        statistics.median(timed),
        len(timed),
        peak,
        before,
        timer.loss[-1],
    )


def step_cases(plan: Plan) -> Iterator[tuple[ModelShape, str, MemoryCase | None]]:
    for shape in plan.shapes:
        for memory in plan.memories:
            yield shape, "smf", memory
        yield shape, "lora", None
        yield shape, "full", None


def measure_all(plan: Plan, budget: Budget) -> list[StepResult]:
    """Every step case in turn; a failed or skipped case is recorded, the rest still run."""
    results = []
    for shape, method, memory in step_cases(plan):
        name = method if memory is None else f"smf-{memory.key}"
        label = f"{shape.label} {name}"
        if reason := budget.short(plan.case_need_s):
            results.append(StepResult(shape.key, name, name, note=f"skipped: {reason}"))
            log(f"  {label}: skipped ({reason})")
            continue
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = measure_case(plan, shape, method, memory)
        except Exception as err:
            traceback.print_exc()
            r = StepResult(shape.key, name, name, note=f"failed: {one_line(err)}")
        free_device_memory(plan.device)
        results.append(r)
        log(
            f"  {label}: {r.note or f'median {fnum(r.median_s)} s, peak {fgib(r.peak_bytes)} GiB'}"
            f" [{time.perf_counter() - t0:.0f} s]"
        )
    return results


def find(results: Sequence[StepResult], shape: str, case: str) -> StepResult | None:
    found = [r for r in results if r.shape == shape and r.case == case and r.median_s]
    return found[0] if found else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def ratio_check(name: str, a: float | None, b: float | None, bound: float) -> Check:
    r = ratio(a, b)
    return Check(
        name,
        "n/a" if r is None else f"{r:.3f}x",
        f"<= {bound:g}x",
        None if r is None else r <= bound,
    )


def step_checks(plan: Plan, results: Sequence[StepResult]) -> list[Check]:
    """The step-time and peak-memory targets."""
    small, large = plan.memories
    q = QWEN25.key
    big, little = find(results, q, "smf-large"), find(results, q, "smf-small")
    full = find(results, q, "full")
    checks = [
        ratio_check(
            f"SMF step ({QWEN25.label} shape, {large.slots:,} slots) / full-finetune step",
            big and big.median_s,
            full and full.median_s,
            T_SMF_VS_FULL,
        ),
        ratio_check(
            f"SMF step ({QWEN25.label} shape) {large.slots:,} / {small.slots:,} slots",
            big and big.median_s,
            little and little.median_s,
            T_LARGE_VS_SMALL,
        ),
    ]
    for shape in plan.shapes:
        full = find(results, shape.key, "full")
        for memory in plan.memories:
            smf = find(results, shape.key, f"smf-{memory.key}")
            checks.append(
                ratio_check(
                    f"SMF peak memory ({shape.label} shape, {memory.slots:,} slots) / full's",
                    smf and smf.peak_bytes,
                    full and full.peak_bytes,
                    T_MEMORY_VS_FULL,
                )
            )
    return checks


def steps_section(plan: Plan, budget: Budget) -> Section:
    """Median step time and peak device memory of SMF, LoRA and full finetuning."""
    results = measure_all(plan, budget)
    shapes = {s.key: s for s in plan.shapes}
    section = Section("steps")
    labels = ", ".join(s.label for s in plan.shapes)
    section.lines += [
        f"Randomly initialised models with the published sizes ({labels}; tied embeddings, "
        f"float32 weights), bf16 autocast (`precision=bf16-mixed`), one fixed "
        f"random batch of {plan.batch} x {plan.seq} tokens, every token labelled. A step is "
        f"Lightning's `on_train_batch_start` -> `on_train_batch_end` of the real method module "
        f"(forward, backward, SMF: count reads, select top {plan.top_t} rows per layer by tfidf "
        f"on synthetic background statistics, clip, row-sparse SGD; LoRA rank 16 / full: "
        f"AdamW, clip 1.0), `torch.cuda.synchronize()` at both ends. Median of {plan.runs} "
        f"steps after {plan.warmup} warm-up. Peak = `torch.cuda.max_memory_allocated()` from "
        f"before the model is built to the end of the steps (weights, optimizer state and "
        f"activations), reset between cases. SMF memories: layers {list(plan.memory_layers)}, "
        f"{plan.memory_heads} heads, k_dim {plan.memory_k_dim}, gate 1.0.",
        "",
    ]
    rows = [
        [
            shapes[r.shape].label,
            r.label,
            fint(r.slots),
            fint(r.trainable),
            fnum(r.median_s * 1e3 if r.median_s else None),
            r.timed or "",
            fgib(r.peak_bytes),
            fgib(r.before_bytes),
            fnum(r.loss),
            r.note or "",
        ]
        for r in results
    ]
    section.lines += table(
        [
            "model shape",
            "configuration",
            "slots/layer",
            "trainable params",
            "median step (ms)",
            "timed steps",
            "peak memory (GiB)",
            "allocated before (GiB)",
            "last loss",
            "note",
        ],
        rows,
        "---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    )
    section.checks = step_checks(plan, results)
    failed = [r for r in results if r.note and r.note.startswith("failed")]
    if all(r.note and r.note.startswith("skipped") for r in results):
        section.status, section.error = "skipped", "every case: " + str(results[0].note)
    if failed:
        section.status, section.error = "failed", failure_summary(failed, len(results), shapes)
    return section


def failure_summary(failed: Sequence[StepResult], total: int, shapes: dict[str, ModelShape]) -> str:
    """One line: the shared error once, or each case's own."""
    notes = {r.note for r in failed}
    if len(notes) == 1:
        return f"{len(failed)} of {total} cases {next(iter(notes))}"
    return "; ".join(f"{shapes[r.shape].label} {r.case}: {r.note}" for r in failed)
