"""One memory layer alone, as SMF trains it: lookup, forward, forward + backward (bf16).

Shows what in an SMF step grows with the table: the product-key search scores every query
half against ``n_keys`` sub-keys, so it costs ~sqrt(slots); the value reads and the deferred
value gradient do not depend on the table size. Medians of ``--runs`` after 2 warm-ups,
interleaved sizes, 8 x 256 tokens, hidden 576 (SmolLM2-135M), heads 4, knn 16.

    python benchmarks/bench_memory_layer.py [--runs 7] [--keys 128,1024]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from smfexp.memory import ProductKeyMemory
from smfexp.memory.deferred import ValueGradSink


def timings(mem: ProductKeyMemory, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    def lookup() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            mem.lookup(x)

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            mem(x)

    def forward_backward() -> None:
        xx = x.clone().requires_grad_()  # the residual stream carries gradient, as in SMF
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mem(xx)
        out.float().sum().backward()
        assert mem.value_grad_sink is not None
        mem.value_grad_sink.clear()

    return {"lookup": lookup, "forward": forward, "forward + backward": forward_backward}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--keys", default="128,1024", help="n_keys values (slots = n_keys**2)")
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(8, 256, 576)
    cases = {}
    for n_keys in (int(k) for k in args.keys.split(",")):
        mem = ProductKeyMemory(576, n_keys=n_keys, heads=4, knn=16, k_dim=256)
        mem.requires_grad_(False)
        mem.values.requires_grad_(True)  # SMF: only the values train
        mem.value_grad_sink = ValueGradSink()
        cases[n_keys] = timings(mem, x)
    samples: dict[tuple[int, str], list[float]] = {}
    for rnd in range(args.runs + 2):  # interleaved rounds; the first two are warm-up
        for n_keys, fns in cases.items():
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if rnd >= 2:
                    samples.setdefault((n_keys, name), []).append(time.perf_counter() - t0)
    first = next(iter(cases))
    print("| n_keys (slots) | part | median (ms) | vs n_keys", first, "|")
    print("|---|---|---:|---:|")
    for (n_keys, name), ts in samples.items():
        med = statistics.median(ts)
        base = statistics.median(samples[(first, name)])
        print(f"| {n_keys} ({n_keys**2:,}) | {name} | {med * 1e3:.1f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
