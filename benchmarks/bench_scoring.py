"""One end-of-run scoring pass with the fact-stream probes (``eval=facts``), as a run scores it.

    python benchmarks/bench_scoring.py [--repeats 2] [--precisions fp32,bf16] [--threads 1]
        [--out benchmarks/results/scoring.md] [--json RAW.json]
    python benchmarks/bench_scoring.py --method lora --precisions bf16 --repeats 1 \
        --out benchmarks/results/scoring_lora.md

The embedded SmolLM2-135M with the default empty 262K-slot memory on blocks 7, 15 and 22 and
only its values trainable (what SMF scores), a real 1000-fact TriviaQA stream (draw 0), and
``ForgettingCallback.score`` - the pass a run makes at the end and after 64 and 256 facts: 256
trained facts and their seen-prompt variant (64), 256 held-out TriviaQA and NQ-open questions,
WikiText and retention as ``conf/eval/facts.yaml`` sizes them. Per precision it times the pass
without the frozen-block cache (``eval.prefix_cache=false``), with a cold cache (blocks 0-6
computed and stored) and with a warm one (read back: every later pass of the run, and every
pass of a later run of the model; once), medians of ``--repeats``. The report says
what the cache saves and how far bf16 scoring moves each metric from fp32 on the same model.

``--method lora``: the embedded model with ``conf/method/lora.yaml``'s adapters (lora_B drawn
at random, as a trained adapter is nonzero), its pass timed as a run makes it (adapters merged
for the pass) and with the adapters left beside every projection (the previous pass),
interleaved; no frozen-block cache (LoRA adapts every block).
"""

# ruff: noqa: E402 - the imports below need sys.path set up first
from __future__ import annotations

import argparse
import contextlib
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

from smfexp.callbacks import forgetting
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


def lora_model(seed: int = 0) -> tuple[Any, Any]:
    """The embedded model with ``conf/method/lora.yaml``'s adapters, lora_B nonzero."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(OmegaConf.load(CONF / "model" / "smollm2-135m.yaml"))
    cfg = OmegaConf.load(CONF / "method" / "lora.yaml")
    model = get_peft_model(model, LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), task_type="CAUSAL_LM", bias="none"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 1e-3)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def adapters_beside(model: Any) -> Any:
    """The pass before adapters were merged for scoring: the model as it is."""
    yield model


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, tokenizer = lora_model() if args.method == "lora" else smf_model()
    datamodule = FactsDataModule(tokenizer, data_dir=args.data_dir, n_facts=1000)
    datamodule.setup("fit")
    out: dict[str, Any] = {"threads": args.threads, "repeats": args.repeats, "modes": {},
                           "method": args.method}

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

    if args.method == "lora":
        merged = forgetting.adapters_merged
        for precision in args.precisions.split(","):
            for _ in range(args.repeats):
                for name, merge in (("adapters merged", merged), ("adapters beside", None)):
                    forgetting.adapters_merged = merge or adapters_beside
                    with tempfile.TemporaryDirectory() as cache:
                        timed(name, precision, False, cache)
        forgetting.adapters_merged = merged
        return out
    for precision in args.precisions.split(","):
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as cache:
                timed("no cache", precision, False, cache)
        with tempfile.TemporaryDirectory() as cache:  # one store: filled once, then read
            timed("cold cache", precision, True, cache)
            for _ in range(args.repeats):
                timed("warm cache", precision, True, cache)
    return out


def drift_rows(first: dict[str, Any] | None, second: dict[str, Any] | None,
               names: tuple[str, str]) -> list[str]:
    """``second`` minus ``first`` (scores of the same model and rows), per probe's metrics."""
    if not (first and second):
        return []
    rows = [f"| probe | metric | {names[0]} | {names[1]} | change |", "|---|---|---:|---:|---:|"]
    for probe, metrics in first.items():
        for metric, value in metrics.items():
            other = second.get(probe, {}).get(metric)
            if metric in ("n", "n_words") or other is None:
                continue
            rel = 100 * (other - value) / abs(value) if value else float("nan")
            rows.append(f"| {probe} | {metric} | {value:.5g} | {other:.5g} | {rel:+.3f}% |")
    return rows


def markdown(out: dict[str, Any], command: str) -> str:
    modes = out["modes"]
    lora = out.get("method") == "lora"
    baseline = "adapters beside" if lora else "no cache"
    lines = ["## Scoring pass (eval=facts, one end-of-run pass"
             + (", LoRA)" if lora else ")"), "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by", "",
             f"    {command}", "",
             f"torch threads {out['threads']}, median of {out['repeats']}. What a pass scores: "
             "see `benchmarks/bench_scoring.py`.", "",
             f"| precision | {'adapters' if lora else 'frozen-block cache'} | median (s) | "
             f"vs {baseline} |", "|---|---|---:|---:|"]
    for name, entry in modes.items():
        precision, mode = name.split(" ", 1)
        base = modes.get(f"{precision} {baseline}", {}).get("median")
        ratio = f"{entry['median'] / base:.3f}x" if base else ""
        lines.append(f"| {precision} | {mode} | {entry['median']:.1f} | {ratio} |")
    if lora:
        precision = next(iter(modes)).split(" ", 1)[0]
        drift = drift_rows(modes.get(f"{precision} adapters beside", {}).get("scores"),
                           modes.get(f"{precision} adapters merged", {}).get("scores"),
                           ("beside", "merged"))
        caption = f"Adapters merged against beside, same model and rows ({precision}):"
    else:
        drift = drift_rows(modes.get("fp32 no cache", {}).get("scores"),
                           modes.get("bf16 no cache", {}).get("scores"), ("fp32", "bf16"))
        caption = "bf16 scoring against fp32, same model and rows (no cache):"
    if drift:
        lines += ["", caption, "", *drift]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--method", choices=("smf", "lora"), default="smf",
                   help="smf: the frozen-block cache's modes; lora: adapters merged vs beside")
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
