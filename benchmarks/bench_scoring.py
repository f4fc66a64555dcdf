"""One end-of-run scoring pass with the fact-stream probes (``eval=facts``), as a run scores it.

    python benchmarks/bench_scoring.py [--repeats 2] [--precisions fp32,bf16] [--threads 1]
        [--out benchmarks/results/scoring.md] [--json RAW.json]

The embedded SmolLM2-135M with the default empty 262K-slot memory on blocks 7, 15 and 22 and
only its values trainable (what SMF scores), a real 1000-fact TriviaQA stream (draw 0), and
``ForgettingCallback.score`` - the pass a run makes at the end and after 64 and 256 facts: 256
trained facts and their seen-prompt variant (64), 256 held-out TriviaQA and NQ-open questions,
WikiText and retention as ``conf/eval/facts.yaml`` sizes them. Per precision it times the pass
without the frozen-block cache (``eval.prefix_cache=false``), with a cold cache (blocks 0-6
computed and stored) and with a warm one (read back: every later pass of the run, and every
pass of a later run of the model; once), medians of ``--repeats``. The report says
what the cache saves and how far bf16 scoring moves each metric from fp32 on the same model.
"""

# ruff: noqa: E402 - the imports below need sys.path set up first
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from omegaconf import OmegaConf

from smfexp.callbacks.forgetting import ForgettingCallback
from smfexp.data.facts import FactsDataModule
from smfexp.eval import EvalConfig
from smfexp.memory import attach_memory, freeze_backbone
from smfexp.models.loading import load_model
from smfexp.tasks import check_probes
from smfexp.utils.io import atomic_write_text

CONF = ROOT / "conf"


def eval_config(precision: str, prefix_cache: bool, data_dir: str) -> EvalConfig:
    """``conf/eval/facts.yaml`` over ``conf/eval/default.yaml``, as a run composes it."""
    merged = OmegaConf.merge(OmegaConf.load(CONF / "eval" / "default.yaml"),
                             OmegaConf.load(CONF / "eval" / "facts.yaml"))
    data = {k: v for k, v in OmegaConf.to_container(merged).items() if k != "defaults"}
    data.update(precision=precision, prefix_cache=prefix_cache, progress=False,
                data_dir=data_dir)
    return check_probes(EvalConfig.from_config(data))


def smf_model() -> tuple[Any, Any]:
    """The embedded model with ``memory=empty`` attached and only its values trainable."""
    model, tokenizer = load_model(OmegaConf.load(CONF / "model" / "smollm2-135m.yaml"))
    memory = OmegaConf.merge(OmegaConf.load(CONF / "memory" / "default.yaml"),
                             OmegaConf.load(CONF / "memory" / "empty.yaml"))
    attach_memory(model, {k: v for k, v in OmegaConf.to_container(memory).items()
                          if k != "defaults"})
    freeze_backbone(model)
    model.eval()
    return model, tokenizer


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, tokenizer = smf_model()
    datamodule = FactsDataModule(tokenizer, data_dir=args.data_dir, n_facts=1000)
    datamodule.setup("fit")
    out: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "modes": {}}

    def timed(name: str, precision: str, prefix_cache: bool, cache: str) -> None:
        os.environ["SMFEXP_CACHE"] = cache  # scores are cached per run dir: never reused here
        cfg = eval_config(precision, prefix_cache, args.data_dir)
        callback = ForgettingCallback(cfg, datamodule.target, tokenizer)
        callback.prepare_rows(model)  # retention's selection: once per model, cached by runs
        t0 = time.perf_counter()
        scores = callback.score(model).scores
        seconds = time.perf_counter() - t0
        entry = out["modes"].setdefault(f"{precision} {name}", {"seconds": []})
        entry["seconds"].append(seconds)
        entry["median"] = statistics.median(entry["seconds"])
        entry["scores"] = scores
        print(f"{precision} {name}: {seconds:.1f} s", flush=True)

    for precision in args.precisions.split(","):
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                timed("no cache", precision, False, cache)
        with tempfile.TemporaryDirectory() as cache:  # one store: filled once, then read
            timed("cold cache", precision, True, cache)
            for _ in range(args.repeats):
                timed("warm cache", precision, True, cache)
    return out


def drift_rows(out: dict[str, Any]) -> list[str]:
    """bf16 minus fp32 on the same model and rows, per probe's headline metrics."""
    fp32 = out["modes"].get("fp32 no cache", {}).get("scores")
    bf16 = out["modes"].get("bf16 no cache", {}).get("scores")
    if not (fp32 and bf16):
        return []
    rows = ["| probe | metric | fp32 | bf16 | bf16 vs fp32 |", "|---|---|---:|---:|---:|"]
    for probe, metrics in fp32.items():
        for metric, value in metrics.items():
            other = bf16.get(probe, {}).get(metric)
            if metric in ("n", "n_words") or other is None:
                continue
            rel = 100 * (other - value) / abs(value) if value else float("nan")
            rows.append(f"| {probe} | {metric} | {value:.5g} | {other:.5g} | {rel:+.3f}% |")
    return rows


def markdown(out: dict[str, Any], command: str) -> str:
    modes = out["modes"]
    lines = ["## Scoring pass (eval=facts, one end-of-run pass)", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by", "",
             f"    {command}", "",
             f"torch threads {out['threads']}, median of {out['repeats']}. What a pass scores: "
             "see `benchmarks/bench_scoring.py`.", "",
             "| precision | frozen-block cache | median (s) | vs no cache |",
             "|---|---|---:|---:|"]
    for name, entry in modes.items():
        precision, mode = name.split(" ", 1)
        base = modes.get(f"{precision} no cache", {}).get("median")
        ratio = f"{entry['median'] / base:.3f}x" if base else ""
        lines.append(f"| {precision} | {mode} | {entry['median']:.1f} | {ratio} |")
    drift = drift_rows(out)
    if drift:
        lines += ["", "bf16 scoring against fp32, same model and rows (no cache):", "", *drift]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--out", default=str(HERE / "results" / "scoring.md"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = run(args)
    command = "python benchmarks/bench_scoring.py " + " ".join(sys.argv[1:])
    atomic_write_text(Path(args.out), markdown(out, command))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
