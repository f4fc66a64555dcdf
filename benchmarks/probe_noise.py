"""How finely each probe resolves a trained model's change: its own paired 95% interval by size.

    python benchmarks/probe_noise.py RUN_DIR [--out results/probe_noise/NAME.json]
        [--words 256,512,1024] [--paragraphs 64,128] [--questions 256] [--fp32]

RUN_DIR is a finished run that saved what it trained (``save_trained=true``, the default of
``python -m smfexp.train``). Both the base model and the run's model score the same rows -
WikiText on the first 40 articles cut to each ``--words`` length, the first ``--paragraphs``
retention paragraphs (selected on the base model), ``--questions`` held-out NQ-open and
TriviaQA questions - and each change gets the paired interval of ``smfexp.eval.paired``: the
half-width says how large a change that probe size can tell from its own sampling noise. bf16
where the CPU has a fast path; ``--fp32`` repeats the largest WikiText and retention sizes in
fp32, to measure bf16's drift on the same model and rows.
"""

# ruff: noqa: E402 - the imports below need sys.path set up first
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from omegaconf import OmegaConf

from smfexp.eval import EvalConfig
from smfexp.eval.paired import paired_change
from smfexp.models.loading import load_model
from smfexp.models.trained import load_trained
from smfexp.tasks import load_probe_rows, score_probe_samples, select_probe_rows
from smfexp.utils.io import atomic_write_json

LEAD = {"wikitext": "word_perplexity", "retention": "logprob"}  # else answer_logprob
ARTICLES = 40


def score_both(models: tuple[Any, Any], tokenizer: Any, probe: str, cfg: EvalConfig,
               rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Base and trained model on the same rows; the lead metric's change and its interval."""
    rows = rows or load_probe_rows(probe, cfg)
    seconds, results = [], []
    for model in models:
        t0 = time.perf_counter()
        results.append(score_probe_samples(probe, model, tokenizer, rows, cfg))
        seconds.append(time.perf_counter() - t0)
    metric = LEAD.get(probe, "answer_logprob")
    change = paired_change(results[0].items[metric], results[1].items[metric])
    return {"metric": metric, "n": change.n, "before": results[0].metrics[metric],
            "after": results[1].metrics[metric], "rel_pct": change.rel_pct,
            "rel_ci": change.rel_ci, "half_width": None if change.rel_ci is None
            else (change.rel_ci[1] - change.rel_ci[0]) / 2, "seconds": seconds,
            "precision": cfg.precision}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.add_argument("--words", default="256,512,1024")
    p.add_argument("--paragraphs", default="64,128")
    p.add_argument("--questions", type=int, default=256)
    p.add_argument("--fp32", action="store_true")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    args = p.parse_args()
    run = Path(args.run_dir)
    spec = OmegaConf.load(run / ".hydra" / "config.yaml").model
    base, tokenizer = load_model(spec)
    trained, _ = load_trained(load_model(spec)[0], run / "trained")
    models = (base, trained)

    def cfg(precision: str, **kw: Any) -> EvalConfig:
        return EvalConfig(probes=["wikitext"], limit=args.questions, max_length=2048,
                          max_gen_toks=16, batch_size=64, progress=False,
                          data_dir=args.data_dir, precision=precision, **kw).resolved()

    out: dict[str, Any] = {"run_dir": run.name, "rows": {}}
    auto = cfg("auto").precision
    precisions = [auto] + (["fp32"] if args.fp32 and auto != "fp32" else [])
    paragraphs = [int(n) for n in args.paragraphs.split(",")]
    for precision in precisions:
        words = [int(w) for w in args.words.split(",")]
        for w in (words if precision == auto else words[-1:]):
            out["rows"][f"wikitext {ARTICLES}x{w} words {precision}"] = score_both(
                models, tokenizer, "wikitext",
                cfg(precision, limits={"wikitext": ARTICLES}, document_words=w))
        select_cfg = cfg(precision, limits={"retention": max(paragraphs)})
        known = select_probe_rows("retention", base, tokenizer,
                                  load_probe_rows("retention", select_cfg), select_cfg)
        for n in (paragraphs if precision == auto else paragraphs[-1:]):
            out["rows"][f"retention {n} paragraphs {precision}"] = score_both(
                models, tokenizer, "retention", select_cfg, known[:n])
        if precision == auto:
            for probe in ("nq_open", "triviaqa"):
                out["rows"][f"{probe} {args.questions} questions {precision}"] = score_both(
                    models, tokenizer, probe, cfg(precision))
    for name, row in out["rows"].items():
        half = row["half_width"]
        print(f"{name:40s} {row['rel_pct']:+.3f}%  half-width "
              f"{'-' if half is None else f'{half:.3f}'}  {row['seconds'][1]:.0f} s")
    path = Path(args.out or ROOT / "results" / "probe_noise" / f"{run.name}.json")
    atomic_write_json(path, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
