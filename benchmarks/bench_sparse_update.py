"""Time one optimizer step on a memory value table: does the cost depend on the table size?

The gradient is real: ``embedding_bag(sparse=True)`` backward for 8 x 256 tokens x 4 heads x
16 knn reads, v_dim 576. A 16,384-row table is compared with 262,144- and 1,048,576-row
tables, for the row-sparse optimizers and the flawed dense masked-AdamW baseline; t = 512
rows (the most read) are selected. Two access patterns for the bigger tables:

* ``same reads``: the 16K table's reads spread over the big table (row * 16 or * 64), so
  only the table size differs;
* ``uniform``: reads uniform over the 1M table (more distinct rows, fewer repeats).

The dense baseline runs at 1M rows only with ``--dense-large`` (it needs ~14 GB).

Run: ``PYTHONPATH=src python benchmarks/bench_sparse_update.py`` (prints a Markdown table).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from dense_masked import DenseMaskedAdamW
from torch import nn

from smfexp.memory.attach import available_host_gb
from smfexp.smf.background import LayerBackground
from smfexp.smf.counting import AccessCounter
from smfexp.smf.selectors import select
from smfexp.smf.sparse_optim import RowSparseAdam, RowSparseSGD

SMALL, MID, LARGE = 16_384, 262_144, 1_048_576


def _available_gb() -> float:
    """MemAvailable in GB (the library's reading; inf where it is unknown)."""
    available = available_host_gb()
    return float("inf") if available is None else available


@dataclass
class Case:
    """One table with a realistic sparse grad, its read counts and the top-t selection."""

    name: str
    table: nn.Parameter
    grad: torch.Tensor
    counts: torch.Tensor
    rows: torch.Tensor


def make_case(name: str, n_rows: int, idx: torch.Tensor, dim: int, top_t: int) -> Case:
    """Table, its sparse grad from a weighted embedding_bag backward, counts, selection."""
    gen = torch.Generator().manual_seed(1)
    table = nn.Parameter(torch.empty(n_rows, dim))
    with torch.no_grad():
        table.normal_(0, 0.02, generator=gen)
    weights = torch.softmax(torch.randn(idx.shape, generator=gen), dim=-1)
    out = F.embedding_bag(idx, table, mode="sum", per_sample_weights=weights, sparse=True)
    out.backward(torch.randn(out.shape, generator=gen))
    counter = AccessCounter([n_rows])
    counter.add(0, idx.reshape(1, idx.shape[0], -1))
    counts = counter.counts(0)
    rows = torch.sort(torch.topk(counts, top_t).indices).values  # the t most-read rows
    return Case(name, table, table.grad, counts, rows)


def time_interleaved(
    make_opt: Callable[[nn.Parameter], torch.optim.Optimizer],
    cases: list[Case],
    repeats: int,
    warmup: int = 2,
) -> dict[str, tuple[float, int]]:
    """Median ms of ``step()`` per case, and optimizer state bytes.

    Cases alternate inside each repeat so load from other processes hits them equally.
    """
    opts = {c.name: make_opt(c.table) for c in cases}
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for i in range(warmup + repeats):
        for c in cases:
            c.table.grad = c.grad
            opts[c.name].set_selected_rows(c.table, c.rows)
            t0 = time.perf_counter()
            opts[c.name].step()
            if i >= warmup:
                times[c.name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for c in cases:
        n_bytes = sum(
            v.numel() * v.element_size()
            for st in opts[c.name].state.values()
            for v in st.values()
            if isinstance(v, torch.Tensor)
        )
        out[c.name] = (statistics.median(times[c.name]), n_bytes)
    del opts
    gc.collect()
    return out


def time_selectors(cases: list[Case], top_t: int, repeats: int) -> dict[tuple[str, str], float]:
    gen = torch.Generator().manual_seed(0)
    bgs = {}
    for c in cases:
        df = torch.randint(0, 100, (c.counts.numel(),), generator=gen)
        bgs[c.name] = LayerBackground(df, df * 3, 100)
    times: dict[tuple[str, str], list[float]] = {}
    for i in range(repeats + 1):
        for name in ("kl", "tfidf"):
            for c in cases:
                t0 = time.perf_counter()
                select(name, c.counts, bgs[c.name], top_t, gen)
                if i:
                    times.setdefault((name, c.name), []).append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top-t", type=int, default=512)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument(
        "--dense-large", action="store_true", help="also run the dense baseline at 1M rows (~14 GB)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    batch, seq, heads, knn = 8, 256, 4, 16
    gen = torch.Generator().manual_seed(0)
    idx_small = torch.randint(0, SMALL, (batch * seq * heads, knn), generator=gen)
    idx_uniform = torch.randint(0, LARGE, idx_small.shape, generator=gen)
    cases = [
        make_case("16K", SMALL, idx_small, args.dim, args.top_t),
        make_case("256K same reads", MID, idx_small * (MID // SMALL), args.dim, args.top_t),
        make_case("1M same reads", LARGE, idx_small * (LARGE // SMALL), args.dim, args.top_t),
        make_case("1M uniform", LARGE, idx_uniform, args.dim, args.top_t),
    ]
    for line in [
        f"{c.name}: grad nnz {c.grad._nnz()}, rows read {int((c.counts > 0).sum())}" for c in cases
    ]:  # comprehension: no loop variable keeps a 2 GB table alive
        print(line)

    sparse_opts: dict[str, Callable[[nn.Parameter], torch.optim.Optimizer]] = {
        "RowSparseSGD (momentum 0.9)": lambda p: RowSparseSGD([p], lr=1e-3, momentum=0.9),
        "RowSparseAdam": lambda p: RowSparseAdam([p], lr=1e-3),
    }
    results: dict[str, dict[str, tuple[float, int]]] = {}
    small = cases[0]
    for name, make_opt in sparse_opts.items():
        start = small.table.detach().clone()
        results[name] = time_interleaved(make_opt, cases, args.repeats)
        changed = (small.table.detach() != start).any(dim=1).nonzero().squeeze(1)
        assert set(changed.tolist()) <= set(small.rows.tolist()), "unselected row moved"
        print(name, {k: round(v[0], 2) for k, v in results[name].items()}, flush=True)
    sel_times = time_selectors(cases, args.top_t, args.repeats)

    # Dense baseline: its cost does not depend on the access pattern. At 1M rows it peaks at
    # ~6 table-sized tensors (param, dense grad, 2 moments, 2 temporaries: ~14 GB), so it
    # only runs there on request and with the memory free.
    dense_name = "DenseMaskedAdamW (flawed baseline)"
    need_gb = 6 * LARGE * args.dim * 4 / 2**30
    del cases[3]  # 1M uniform
    if not args.dense_large:
        del cases[2]
    gc.collect()
    if args.dense_large and _available_gb() < need_gb + 2:
        print(f"skip dense baseline at 1M rows: needs ~{need_gb:.0f} GB free")
        del cases[2]
        gc.collect()
    dense_cases = cases
    results[dense_name] = time_interleaved(
        lambda p: DenseMaskedAdamW([p], lr=1e-3), dense_cases, args.repeats
    )
    print(dense_name, {k: round(v[0], 2) for k, v in results[dense_name].items()}, flush=True)

    cols = ["16K", "256K same reads", "1M same reads", "1M uniform"]
    print(
        f"\nOne optimizer step, median of {args.repeats} (after 2 warm-up, table sizes "
        f"interleaved), {args.threads} thread(s), t = {args.top_t}, v_dim {args.dim}, "
        f"{batch}x{seq} tokens x {heads} heads x {knn} knn = {idx_small.numel()} reads\n"
    )
    # imported here, not at the top: the suite (cases.py) imports this module before forking
    # its measured children, whose peak RSS must not include pandas
    from smfexp.reporting.tables import md_table

    head = ["step", *(f"{c} (ms)" for c in cols), *(f"{c} / 16K" for c in cols[1:]),
            "optimizer state, largest table"]  # fmt: skip

    def fmt(x: float | None, unit: str = "") -> str:
        return "n/a" if x is None else f"{x:.2f}{unit}"

    rows = []
    for name, res in results.items():
        ms = [res[c][0] if c in res else None for c in cols]
        ratios = [None if m is None else m / ms[0] for m in ms[1:]]
        state = next((res[c][1] for c in reversed(cols) if c in res), None)
        state_s = "n/a" if state is None else f"{state / 2**20:.1f} MiB"
        rows.append([name, *(fmt(m) for m in ms), *(fmt(r, "x") for r in ratios), state_s])
    for sel in ("kl", "tfidf"):
        ms = [sel_times[(sel, c)] for c in cols]
        rows.append([f"selector {sel} (top-{args.top_t})", *(fmt(m) for m in ms),
                     *(fmt(m / ms[0], "x") for m in ms[1:]), "-"])  # fmt: skip
    print(md_table(head, rows))
    print(
        f"\n(value table: 16K rows = {SMALL * args.dim * 4 / 2**20:.0f} MiB, "
        f"1M rows = {LARGE * args.dim * 4 / 2**30:.2f} GiB)"
    )


if __name__ == "__main__":
    main()
