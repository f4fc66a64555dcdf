"""Key usage of retrofitted memories: how many slots the background corpus reads, how much
of the reading goes to the most-read 1% of slots, and whether different facts read different
slots where their answers are predicted.

A memory whose reads have collapsed onto a few slots cannot localise an update: the slots a
fact writes to are the ones every text reads. And if every fact reads the same slots at its
answer position, an update for one fact is an update for all of them: only what they share
(the answer format) can be learned there. Usage:

    python benchmarks/key_usage.py [RETROFIT_DIR ...] [--batches 4] [--facts 128]

Without directories it reports every cached retrofit of the embedded model
(``$SMFEXP_CACHE/retrofit/smollm2-135m-*``). Batches are 8 x 256 background tokens, bf16.
Facts are the first ``--facts`` of ``data=triviaqa_facts`` (its default template and seed).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import torch
from omegaconf import OmegaConf

from smfexp.data.modules import BackgroundDataModule, TriviaQAFactsDataModule
from smfexp.memory import detach_memory, memory_modules
from smfexp.memory.checkpoint import load_memory, read_memory_meta
from smfexp.models.loading import ModelSpec, load_model
from smfexp.smf.background import top_read_share
from smfexp.training.loss import loss_bearing_mask
from smfexp.utils.io import cache_root

CONF = Path(__file__).resolve().parents[1] / "conf"


def usage(counts: torch.Tensor) -> tuple[float, float]:
    """(share of slots read at least once, share of reads taken by the top 1% of slots)."""
    return float((counts > 0).double().mean()), top_read_share(counts, 0.01)


def separation(reads: list[torch.Tensor]) -> tuple[float, int, float]:
    """Over one position per fact (each a 1-D tensor of slots read): mean pairwise Jaccard
    overlap, distinct slots read, and the share of reads on slots that >= 25% of the facts
    read."""
    sets = [set(r.tolist()) for r in reads]
    pairs = [len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    facts_per_slot = Counter(slot for s in sets for slot in s)
    common = {slot for slot, n in facts_per_slot.items() if n >= 0.25 * len(sets)}
    shared = sum(len(s & common) for s in sets) / sum(len(s) for s in sets)
    return sum(pairs) / max(len(pairs), 1), len(facts_per_slot), shared


def fact_reads(model: torch.nn.Module, batches: list[dict]) -> list[dict[str, list]]:
    """Per memory layer: the slots each fact reads at its first answer-predicting position
    ("answer") and at the middle token of its prompt ("question")."""
    out = [{"answer": [], "question": []} for _ in memory_modules(model)]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            answer_pos = loss_bearing_mask(batch["labels"]).int().argmax(dim=1)
            start = batch["attention_mask"].int().argmax(dim=1)  # left padding, if any
            for layer, m in zip(out, memory_modules(model), strict=True):
                for row, (a, s0) in enumerate(zip(answer_pos.tolist(), start.tolist(),
                                                  strict=True)):
                    layer["answer"].append(m.last_indices[row, a])
                    layer["question"].append(m.last_indices[row, (s0 + a) // 2])
    return out


def facts_batches(tok: object, n_facts: int) -> list[dict]:
    cfg = OmegaConf.load(CONF / "data" / "triviaqa_facts.yaml")
    keep = ("prompt_template", "target_template", "max_length", "heldout_size", "facts_seed",
            "append_eos", "loss_on")
    data = TriviaQAFactsDataModule(tokenizer=tok, data_dir=os.environ.get("SMFEXP_DATA_DIR"),
                                   batch_size=8, n_facts=n_facts, shuffle_seed=0,
                                   **{k: cfg[k] for k in keep})
    data.setup("fit")
    collate = data.train_dataloader().collate_fn
    ex = data.train_examples
    return [collate(ex[i : i + 8]) for i in range(0, len(ex), 8)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("retrofits", nargs="*", help="retrofit cache directories")
    p.add_argument("--batches", type=int, default=4, help="background batches of 8 x 256")
    p.add_argument("--facts", type=int, default=128, help="TriviaQA facts (0: skip that table)")
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
    facts = facts_batches(tok, args.facts) if args.facts else []
    print("| retrofit | slots | query_norm | slots ever read (per layer) | reads in top 1% |")
    print("|---|---:|---|---|---|")
    separations = []
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
        if facts:
            layers = fact_reads(model, facts)
            separations.append((directory.name, memories[0].n_slots, memory.get("query_norm"),
                                {k: [separation(layer[k]) for layer in layers]
                                 for k in ("answer", "question")}))
        detach_memory(model)
    if separations:
        print(f"\nSlots read by {args.facts} facts at one position each (per layer): mean "
              "pairwise overlap (Jaccard), distinct slots, share of reads on slots that >= 25% "
              "of the facts read.\n")
        print("| retrofit | slots | query_norm | position | overlap | distinct slots | "
              "reads on common slots |")
        print("|---|---:|---|---|---|---|---|")
        for name, n_slots, norm, by_pos in separations:
            for pos, per_layer in by_pos.items():
                print(f"| {name} | {n_slots:,} | {norm} | {pos} | "
                      + " / ".join(f"{j:.2f}" for j, _, _ in per_layer) + " | "
                      + " / ".join(f"{d}" for _, d, _ in per_layer) + " | "
                      + " / ".join(f"{c:.0%}" for _, _, c in per_layer) + " |")


if __name__ == "__main__":
    main()
