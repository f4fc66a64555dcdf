"""Key usage of retrofitted memories: how many slots the background corpus reads, and how
much of the reading goes to the most-read 1% of slots.

A memory whose reads have collapsed onto a few slots cannot localise an update: the slots a
fact writes to are the ones every text reads. Usage:

    python benchmarks/key_usage.py [RETROFIT_DIR ...] [--batches 4]

Without directories it reports every cached retrofit of the embedded model
(``$SMFEXP_CACHE/retrofit/smollm2-135m-*``). Batches are 8 x 256 background tokens, bf16.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from smfexp.data.modules import BackgroundDataModule
from smfexp.memory import detach_memory, memory_modules
from smfexp.memory.checkpoint import load_memory, read_memory_meta
from smfexp.models.loading import ModelSpec, load_model
from smfexp.smf.background import top_read_share
from smfexp.utils.io import cache_root

CONF = Path(__file__).resolve().parents[1] / "conf"


def usage(counts: torch.Tensor) -> tuple[float, float]:
    """(share of slots read at least once, share of reads taken by the top 1% of slots)."""
    return float((counts > 0).double().mean()), top_read_share(counts, 0.01)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("retrofits", nargs="*", help="retrofit cache directories")
    p.add_argument("--batches", type=int, default=4, help="background batches of 8 x 256")
    args = p.parse_args()
    dirs = [Path(d) for d in args.retrofits] or sorted(
        (cache_root() / "retrofit").glob("smollm2-135m-*"))
    if not dirs:
        raise SystemExit("no retrofit given and none cached: run `python -m smfexp.retrofit`")
    spec = OmegaConf.to_container(OmegaConf.load(CONF / "model" / "smollm2-135m.yaml"))
    model, tok = load_model(ModelSpec.from_config(spec))
    data = BackgroundDataModule(data_dir=os.environ.get("SMFEXP_DATA_DIR"), tokenizer=tok,
                                batch_size=8, max_length=256, shuffle_seed=0)
    data.setup("fit")
    batches = [b for _, b in zip(range(args.batches), data.train_dataloader(), strict=False)]
    print("| retrofit | slots | query_norm | slots ever read (per layer) | reads in top 1% |")
    print("|---|---:|---|---|---|")
    for directory in dirs:
        memory = read_memory_meta(directory)["memory"]
        load_memory(model, directory)
        model.eval()
        memories = memory_modules(model)
        counts = [torch.zeros(m.n_slots, dtype=torch.int64) for m in memories]
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for batch in batches:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                for c, m in zip(counts, memories, strict=True):
                    real = m.last_indices[batch["attention_mask"].bool()].reshape(-1)
                    c += torch.bincount(real, minlength=m.n_slots)
        stats = [usage(c) for c in counts]
        print(f"| {directory.name} | {memories[0].n_slots:,} | {memory.get('query_norm')} | "
              + " / ".join(f"{s[0]:.1%}" for s in stats) + " | "
              + " / ".join(f"{s[1]:.0%}" for s in stats) + " |", flush=True)
        detach_memory(model)


if __name__ == "__main__":
    main()
