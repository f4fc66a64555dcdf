"""Where SMF's WikiText forgetting comes from: per token, per memory layer, per read.

A run that started from an empty memory changed only the value rows it wrote, so every
change of the model's loss on general text comes from tokens that read written rows. This
script takes such a run (``save_trained=true``) and measures, on the WikiText document the
run scored:

- how the loss change is spread over tokens (share of the total from the top 1 / 10% of
  tokens, share of tokens that got worse);
- the loss change by how much of a token's read weight lands on written rows;
- each memory layer alone, and all but one (the other layers' written rows set back to 0):
  the WikiText change and the exact match on the run's 64 scored facts - which layer pays
  for what it learns;
- the tokens that lost most, in context.

Usage (a few minutes on one CPU core)::

    python benchmarks/forgetting_tokens.py RUN_DIR [--out FILE.json] [--top 15]

``RUN_DIR`` is a finished run of ``smfexp.train`` with ``trained/memory`` (its Hydra
directory: ``.hydra/config.yaml`` says which model, facts and scoring it used).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from smfexp.data.sampling import evenly_spaced
from smfexp.eval import EvalConfig
from smfexp.eval.encode import Encoder, resolve_max_length, scoring_mode
from smfexp.eval.rolling import rolling_windows
from smfexp.memory import memory_modules
from smfexp.memory.checkpoint import load_memory
from smfexp.models.loading import load_model
from smfexp.tasks import load_probe_rows, score_probe
from smfexp.tasks.wikitext import wikitext_detokenizer
from smfexp.utils.io import atomic_write_json

READ_BINS = (0.0, 0.01, 0.05, 0.2, 0.5, 1.01)


def token_losses(model: Any, windows: list[tuple[list[int], list[int]]],
                 memories: list[torch.nn.Module], written: list[torch.Tensor],
                 precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per predicted token: (negative log-likelihood, [layers] share of its read weight on
    written rows), over every window in order."""
    nll, share = [], []
    with torch.inference_mode(), scoring_mode(model, precision):
        for context, continuation in windows:
            ids = torch.tensor([context + continuation[:-1]])
            logits = model(input_ids=ids).logits[0, -len(continuation):].float()
            target = torch.tensor(continuation)
            nll.append(F.cross_entropy(logits, target, reduction="none"))
            per_layer = []
            for memory, rows in zip(memories, written, strict=True):
                idx = memory.last_indices[0, -len(continuation):]
                w = memory.last_weights[0, -len(continuation):].float()
                per_layer.append((w * rows[idx]).sum(-1) / memory.heads)
            share.append(torch.stack(per_layer, dim=-1))
    return torch.cat(nll), torch.cat(share)


def concentration(delta: torch.Tensor) -> dict[str, float]:
    """How the total loss change is spread: the share of the sum from the tokens that lost
    most (top 1 / 10%), and the share of tokens that got worse."""
    total = float(delta.sum())
    ordered = delta.sort(descending=True).values
    n = delta.numel()
    return {
        "tokens": n,
        "total_nll_change": total,
        "mean_nll_change": total / n,
        "share_worse": float((delta > 0).double().mean()),
        "top1pct_share_of_total": float(ordered[: max(1, n // 100)].sum()) / total,
        "top10pct_share_of_total": float(ordered[: max(1, n // 10)].sum()) / total,
        "positive_sum": float(delta.clamp_min(0).sum()),
        "negative_sum": float(delta.clamp_max(0).sum()),
    }


def by_read_share(delta: torch.Tensor, share: torch.Tensor) -> list[dict[str, float]]:
    """Loss change of the tokens binned by the read weight on written rows (mean over
    layers)."""
    total = float(delta.sum())
    out = []
    for lo, hi in itertools.pairwise(READ_BINS):
        mask = (share >= lo) & (share < hi)
        k = int(mask.sum())
        out.append({"read_share_from": lo, "read_share_to": min(hi, 1.0),
                    "tokens": k, "token_share": k / delta.numel(),
                    "mean_nll_change": float(delta[mask].mean()) if k else math.nan,
                    "share_of_total": float(delta[mask].sum()) / total if k else 0.0})
    return out


def worst_tokens(delta: torch.Tensor, ids: list[int], tokenizer: Any, top: int,
                 share: torch.Tensor) -> list[dict[str, Any]]:
    out = []
    for i in delta.topk(top).indices.tolist():
        out.append({"position": i, "token": tokenizer.decode([ids[i]]),
                    "context": tokenizer.decode(ids[max(0, i - 12): i]),
                    "nll_change": float(delta[i]),
                    "read_share_written": [round(float(s), 3) for s in share[i]]})
    return out


def set_values(memories: list[torch.nn.Module], trained: list[torch.Tensor],
               keep: set[int]) -> None:
    """The trained value tables on the layers in ``keep``, an empty memory elsewhere."""
    with torch.no_grad():
        for i, (memory, values) in enumerate(zip(memories, trained, strict=True)):
            memory.values.copy_(values if i in keep else torch.zeros_like(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file for the numbers (default RUN_DIR/forgetting_tokens.json)")
    parser.add_argument("--top", type=int, default=15, help="worst tokens to list")
    args = parser.parse_args()

    cfg = OmegaConf.load(args.run_dir / ".hydra" / "config.yaml")
    if cfg.get("memory", {}).get("value_init") != "zero":
        raise SystemExit("forgetting_tokens: the run must start from an empty memory "
                         "(memory=empty), so that its written rows are all it changed")
    model, tokenizer = load_model(cfg.model)
    load_memory(model, args.run_dir / "trained" / "memory")
    model.eval()
    memories = list(memory_modules(model))
    trained = [m.values.detach().clone() for m in memories]
    written = [(v != 0).any(dim=1).float() for v in trained]

    eval_cfg = EvalConfig.from_config(cfg.eval)
    wiki_rows = load_probe_rows("wikitext", eval_cfg)
    encoder = Encoder(tokenizer, resolve_max_length(model, tokenizer, eval_cfg.max_length))
    ids = encoder.encode_many([wikitext_detokenizer(r["page"]) for r in wiki_rows])
    windows = [w for doc in ids
               for w in rolling_windows(doc, encoder.prefix_token_id, encoder.max_length)]
    flat_ids = [t for _, cont in windows for t in cont]

    datamodule = hydra.utils.instantiate(cfg.data, tokenizer=tokenizer, _convert_="all")
    datamodule.setup("fit")
    target = datamodule.target
    fact_rows = evenly_spaced(target.rows, eval_cfg.limit_for("target") or 64)

    variants: dict[str, set[int]] = {"base": set(), "all layers": set(range(len(memories)))}
    for i in range(len(memories)):
        variants[f"only memory {i}"] = {i}
        if len(memories) > 2:
            variants[f"all but memory {i}"] = set(range(len(memories))) - {i}
    report: dict[str, Any] = {"run": str(args.run_dir), "variants": {}}
    losses: dict[str, torch.Tensor] = {}
    reads: dict[str, torch.Tensor] = {}
    for name, keep in variants.items():
        set_values(memories, trained, keep)
        losses[name], reads[name] = token_losses(model, windows, memories, written,
                                                 eval_cfg.precision)
        wiki = score_probe("wikitext", model, tokenizer, wiki_rows, eval_cfg)
        facts = score_probe(target.probe, model, tokenizer, fact_rows, eval_cfg)
        report["variants"][name] = {"wikitext": wiki, "target": facts}
        print(f"{name:18s} WikiText word ppl {wiki['word_perplexity']:.3f}  "
              f"target {json.dumps({k: round(v, 3) for k, v in facts.items()})}", flush=True)

    delta = losses["all layers"] - losses["base"]
    shares = reads["all layers"]
    report["rows_written_share"] = [float(w.mean()) for w in written]
    report["concentration"] = concentration(delta)
    report["by_read_share"] = by_read_share(delta, shares.mean(-1))
    report["per_layer_read_share_mean"] = [float(s) for s in shares.mean(0)]
    report["worst_tokens"] = worst_tokens(delta, flat_ids, tokenizer, args.top, shares)
    report["layer_additivity"] = {
        name: float((losses[name] - losses["base"]).sum()) for name in variants if name != "base"}
    out = args.out or args.run_dir / "forgetting_tokens.json"
    atomic_write_json(out, report)
    print(json.dumps({k: report[k] for k in ("concentration", "by_read_share",
                                             "layer_additivity")}, indent=1))
    for t in report["worst_tokens"]:
        print(f"{t['nll_change']:+.3f}  {t['context']!r} -> {t['token']!r}  "
              f"{t['read_share_written']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
