"""Benchmark suite (issues #8, #24): the fact stream (one fact step of SMF / LoRA / full, the
SMF step per phase, its peak memory, the targets), then forward, training step, SMF scaling
and peak memory at the old 8 x 256-token / 16K-slot shape, and evaluation.

    python benchmarks/suite.py [--quick] [--out BENCHMARKS.md] [--runs 3]
                               [--only facts,forward,train,scaling,eval] [--json RAW.json]
                               [--fact-runs 10] [--fact-keys 512,1024] [--fact-phrasings 4,8]
                               [--stream-results DIR]
                               [--medmcqa 200 --triviaqa 200 --wikitext 5] [--threads N]
                               [--dense-large]

(``make bench``; ``make bench BENCH_ARGS=--quick`` for the smoke test.) ``--help`` lists the
rest (batch, sequence length, n_keys pair, eval batch size and repetitions, timeouts).

Writes one Markdown file (atomically): the machine (CPU model, cores, bf16/AMX flags, library
versions, date), the exact command, and one table per section with median seconds, ratios and
peak RSS. Progress goes to stdout.

How it measures (child processes, medians, the real method modules): see ``cases.py``, which
this file drives; ``suite_plan.py`` lists the configurations, ``machine.py`` describes the
machine and ``bench_report/`` writes the Markdown. Here is the command line.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# cases, imported before anything imports smfexp (bench_report imports it first), sets sys.path
# (src/) and the environment (offline hub, no progress bars) before its heavy imports
from bench_facts import PHASES as PHASES  # the phases of section 2 (tests read them here)
from bench_report import Report
from cases import progress_line, run_isolated
from machine import machine_info
from suite_plan import PRECISIONS, SECTIONS, Settings, plan

from smfexp.utils.io import atomic_write_json, atomic_write_text
from smfexp.utils.precision import resolve_precision


# =========================================================================== command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model, small sizes (smoke test)")
    p.add_argument("--out", default="BENCHMARKS.md", help="Markdown output (written atomically)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--runs", type=int, default=3, help="timed repetitions per config (>= 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (2)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--model", default=None, help="conf/model entry (default smollm2-135m)")
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (256)")
    p.add_argument("--small-keys", type=int, default=None, help="n_keys of the default (128)")
    p.add_argument("--large-keys", type=int, default=None, help="n_keys of the large (1024)")
    p.add_argument(
        "--scaling-precision",
        default="auto",
        help="precision of the scaling steps (auto: bf16-mixed if the CPU has it)",
    )
    p.add_argument("--medmcqa", type=int, default=None, help="eval rows (200)")
    p.add_argument("--triviaqa", type=int, default=None, help="eval rows (64)")
    p.add_argument("--wikitext", type=int, default=None, help="eval documents (3)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="smfexp/lm_eval batch (16)")
    p.add_argument("--eval-runs", type=int, default=None, help="eval repetitions (--runs)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (0: torch's default; --quick: 1, steadier on shared cores)",
    )
    p.add_argument(
        "--update-threads",
        type=int,
        default=1,
        help="torch threads for the update-alone timings (1, as bench_sparse_update.py: "
        "ms-scale ops on shared cores stall on OpenMP barriers)",
    )
    p.add_argument(
        "--dense-large",
        action="store_true",
        help="also run dense_masked configs that need > 4 GiB (1M slots: ~16 GiB for one table)",
    )
    p.add_argument("--fact-runs", type=int, default=None,
                   help="timed fact steps per fact-stream config (10; --quick: 3)")
    p.add_argument("--fact-keys", default=None,
                   help="n_keys of the empty memories, comma-separated (512,1024; --quick: 64,128)")
    p.add_argument("--fact-phrasings", default="4,8", help="phrasings per fact step (4,8)")
    p.add_argument("--fact-top-t", type=int, default=None, help="SMF rows per layer (1024)")
    p.add_argument(
        "--stream-results",
        default=None,
        help="folders of real runs, comma-separated: their results.json files give the "
        "stream wall time and the scoring share (median per method and stream length; "
        "resumed runs left out)",
    )
    p.add_argument("--data-dir", default=None, help="offline data ($SMFEXP_DATA_DIR, ./data)")
    p.add_argument("--logs", default=None, help="keep each child's output here (default: temp)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    args = p.parse_args(argv)
    if args.runs < 3 or (args.eval_runs is not None and args.eval_runs < 3):
        p.error("medians need >= 3 repetitions (--runs / --eval-runs)")
    if args.fact_runs is not None and args.fact_runs < 3:
        p.error("medians need >= 3 repetitions (--fact-runs)")
    bad = sorted(set(args.only.split(",")) - set(SECTIONS))
    if bad:
        p.error(f"--only: unknown section(s) {bad}; valid: {','.join(SECTIONS)}")
    return args


def make_settings(args: argparse.Namespace) -> Settings:
    q = args.quick

    def pick(value: Any, quick: Any, full: Any) -> Any:
        return value if value is not None else (quick if q else full)

    precision = resolve_precision(args.scaling_precision, "cpu")
    if precision not in PRECISIONS:
        raise SystemExit(f"--scaling-precision: use auto, 32-true or bf16-mixed, not {precision}")
    return Settings(
        quick=q,
        model=pick(args.model, "tiny", "smollm2-135m"),
        batch=pick(args.batch, 2, 8),
        seq=pick(args.seq, 64, 256),
        runs=args.runs,
        warmup=pick(args.warmup, 1, 2),
        small_keys=pick(args.small_keys, 32, 128),
        large_keys=pick(args.large_keys, 256, 1024),
        update_dim=64 if q else 576,
        top_t=512,
        scaling_precision=precision,
        eval_rows={
            "medmcqa": pick(args.medmcqa, 8, 200),
            "triviaqa": pick(args.triviaqa, 1, 64),
            "wikitext": pick(args.wikitext, 1, 3),
        },
        eval_batch_size=pick(args.eval_batch_size, 8, 16),
        eval_runs=args.eval_runs or args.runs,
        threads=pick(args.threads, 1, 0),
        update_threads=args.update_threads,
        dense_large=args.dense_large,
        data_dir=args.data_dir,
        timeout=args.timeout,
        fact_phrasings=ints(args.fact_phrasings),
        fact_keys=ints(args.fact_keys or ("64,128" if q else "512,1024")),
        fact_runs=pick(args.fact_runs, 3, 10),
        fact_top_t=pick(args.fact_top_t, 256, 1024),
        stream_results=args.stream_results,
    )


def ints(text: str) -> tuple[int, ...]:
    """"4,8" -> (4, 8)."""
    return tuple(int(x) for x in text.split(",") if x.strip())


# =========================================================================== main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = make_settings(args)
    sections = [x for x in SECTIONS if x in args.only.split(",")]
    command = "python benchmarks/suite.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    if "eval" in sections:  # import once here, so every forked child has it already
        import lm_eval.evaluator
        import lm_eval.models.huggingface
        import lm_eval.tasks  # noqa: F401
    machine = machine_info()
    specs = plan(sections, s)
    print(
        f"[suite] {len(specs)} configurations, sections {','.join(sections)}, model {s.model}"
        f"{' (--quick)' if s.quick else ''} -> {args.out}",
        flush=True,
    )
    logs = Path(args.logs or tempfile.mkdtemp(prefix="smfexp-suite-"))
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(specs, 1):
        print(
            f"[suite {i}/{len(specs)}] {spec['section']}: {spec['label']} ...", end=" ", flush=True
        )
        log = logs / (spec["id"].replace("/", "_") + ".log")
        results[spec["id"]] = run_isolated(spec, s, str(log))
        r = results[spec["id"]]
        print(f"{progress_line(spec, r)} [{r['elapsed']:.1f} s]", flush=True)
        if "error" in r:
            print(r.get("traceback", ""), f"(child output: {log})", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    text = Report(s, results).render(machine, command, sections, started, seconds)
    atomic_write_text(args.out, text + "\n")
    if args.json:
        atomic_write_json(
            args.json,
            {"settings": asdict(s), "machine": machine, "command": command, "results": results},
        )
    failed = [k for k, r in results.items() if "error" in r]
    if not failed and not args.logs:
        shutil.rmtree(logs, ignore_errors=True)
    print(
        f"[suite] wrote {args.out} in {seconds:.0f} s"
        f"{f'; {len(failed)} failed: ' + ', '.join(failed) if failed else ''}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
