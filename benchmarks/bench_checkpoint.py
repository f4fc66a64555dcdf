"""What one resumable checkpoint costs: Lightning's writer against smfexp's streaming one.

A checkpoint of SMF is mostly its value tables (3 x 262,144 x 576 fp32 = 1.8 GB on the grid's
memory, 7.2 GB on 1M slots). Lightning's ``TorchCheckpointIO`` serialises into a ``BytesIO``
and then writes it, so the whole checkpoint sits in memory twice;
``smfexp.checkpointing.StreamingCheckpointIO`` ``torch.save``-s into a temporary file beside
the target and renames it. Each writer runs in a fresh process (its peak RSS is its own):
the peak above the state's own size, and the save's seconds (median of ``--runs``).

Run: ``PYTHONPATH=src python benchmarks/bench_checkpoint.py --gb 1.8`` (prints a Markdown table).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITERS = ("lightning", "streaming")


def _one(writer: str, gb: float, runs: int, directory: Path) -> dict[str, float]:
    """In this process: build a state of ``gb`` GB, save it ``runs`` times with ``writer``."""
    import torch
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from smfexp.checkpointing import StreamingCheckpointIO

    rows = int(gb * 2**30 / (576 * 4) / 3)
    state = {"state_dict": {f"L{i}.values": torch.randn(rows, 576) for i in range(3)}}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GB (kB on Linux)
    io = TorchCheckpointIO() if writer == "lightning" else StreamingCheckpointIO()
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        io.save_checkpoint(state, directory / "last.ckpt")
        seconds.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": statistics.median(seconds), "extra_gb": peak - base,
            "file_gb": (directory / "last.ckpt").stat().st_size / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.8, help="checkpoint size (GB)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=WRITERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(_one(args.child, args.gb, args.runs, Path(tmp))))
        return
    rows = {}
    for writer in WRITERS:
        out = subprocess.run([sys.executable, __file__, "--child", writer, "--gb", str(args.gb),
                              "--runs", str(args.runs)], capture_output=True, text=True,
                             check=True)
        rows[writer] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"| writer | file | peak memory above the state | save (median of {args.runs}) |")
    print("|---|---|---|---|")
    for writer, r in rows.items():
        print(f"| {writer} | {r['file_gb']:.2f} GB | {r['extra_gb']:.2f} GB | "
              f"{r['seconds']:.1f} s |")
    ratio = rows["streaming"]["seconds"] / rows["lightning"]["seconds"]
    print(f"\nstreaming / lightning save time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
