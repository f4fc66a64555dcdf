"""The CUDA check: device tests, short training runs, step time / peak memory, eval throughput.

    python benchmarks/gpu_check.py [--out BENCHMARKS_GPU.md] [--budget-s 480] [--wheels DIR]
                                   [--data-dir DIR]
    python benchmarks/gpu_check.py --dry-run [--out PATH]   # CPU, tiny shapes: the code paths
    python benchmarks/gpu_check.py --download-wheels DIR    # on a machine with PyPI access

(``make gpu-check``.) On a CUDA machine it runs, within ``--budget-s`` seconds:

1. the fast tests that touch devices (pytest in a child process, ``SMFEXP_TEST_DEVICE=cuda``);
2. ``python -m smfexp.train experiment=smoke trainer=gpu`` for smf, lora and full;
3. the median step time and ``torch.cuda.max_memory_allocated`` of SMF (16K and 1M slots per
   layer), LoRA and full finetuning on randomly initialised SmolLM2-135M- and
   Qwen2.5-0.5B-shaped models (bf16 autocast, 16 x 512 tokens), through the real method
   modules and a Lightning Trainer, as ``benchmarks/suite.py`` measures a step on CPU;
4. log-likelihood and greedy-generation tokens/s of ``smfexp.eval`` (SmolLM2 shape, bf16),

and writes one Markdown file with the device, the versions, every measurement and the
targets. A failing section is recorded there and the rest still runs; the exit code is 1 if
any section failed. Without CUDA (and without ``--dry-run``) it prints one line and exits 0.

It runs from a plain Python with torch, lightning, transformers and peft: ``src/`` goes on
``sys.path`` when smfexp is not installed, and missing pure-Python dependencies (hydra-core,
omegaconf, wandb, ...) are installed offline from ``<repo>/wheels`` (``--wheels DIR``), which
``--download-wheels DIR`` prepares on a machine that can reach PyPI.

This file is the entry point; the work is in ``benchmarks/gpu/``, one job per module:
``env`` (imports, offline installs, child processes), ``plan`` (sizes, targets, time budget),
``device_tests``, ``runs``, ``steps``, ``throughput`` (sections 1-4), ``sections`` (a
section and its guard) and ``markdown`` (the results file).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu.device_tests import tests_section
from gpu.env import ROOT, download_wheels, prepare_imports
from gpu.markdown import render, write_atomic
from gpu.plan import REPORT_RESERVE_S, Budget, make_plan
from gpu.runs import find_data_dir, runs_section
from gpu.sections import guarded, log
from gpu.steps import steps_section
from gpu.throughput import eval_section

NO_CUDA_LINE = (
    "gpu_check: no CUDA device here; nothing to check (use --dry-run to exercise the code "
    "paths on CPU)"
)



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="CPU, tiny shapes, few steps: exercise every code path (CI)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="results file (default BENCHMARKS_GPU.md in the repo; --dry-run: a temp file)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="total seconds; heavy cases are skipped when it is nearly spent (480)",
    )
    p.add_argument(
        "--wheels",
        default=None,
        help="wheel folder for missing dependencies (default <repo>/wheels if present)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="offline data ($SMFEXP_DATA_DIR, <repo>/data, ../shared/data)",
    )
    p.add_argument(
        "--download-wheels",
        metavar="DIR",
        default=None,
        help="only download/build the wheels of the missing-dependency list into DIR "
        "(needs PyPI), then exit",
    )
    p.add_argument(
        "--platform",
        default=None,
        help="with --download-wheels: pip's --platform of the GPU machine "
        "(e.g. manylinux2014_x86_64)",
    )
    p.add_argument(
        "--python-version",
        default=None,
        help="with --download-wheels: the GPU machine's Python (e.g. 3.11)",
    )
    args = p.parse_args(argv)
    if args.budget_s <= REPORT_RESERVE_S:
        p.error(f"--budget-s must exceed {REPORT_RESERVE_S:g} s")
    return args



def quiet_libraries() -> None:
    """No Lightning banners or transformers chatter in the progress output."""
    import lightning  # noqa: F401 - it sets its loggers' levels on import: import it first

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "smfexp"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(Exception):
        import transformers

        transformers.logging.set_verbosity_error()



def output_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out).resolve()
    if args.dry_run:
        fd, name = tempfile.mkstemp(prefix="gpu-check-", suffix=".md")
        os.close(fd)
        return Path(name)
    return ROOT / "BENCHMARKS_GPU.md"



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.download_wheels:
        return download_wheels(Path(args.download_wheels), args.platform, args.python_version)
    if not args.dry_run and not torch.cuda.is_available():
        print(NO_CUDA_LINE)
        return 0
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("HF_DATASETS_OFFLINE", "1"),
        ("WANDB_MODE", "offline"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(key, value)
    started = datetime.datetime.now(datetime.UTC)
    budget = Budget(args.budget_s)
    plan = make_plan(args.dry_run)
    out = output_path(args)
    command = "python benchmarks/gpu_check.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    wheels = Path(args.wheels) if args.wheels else ROOT / "wheels"
    setup = prepare_imports(wheels)
    for note in setup.notes:
        log(note)
    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    data_dir = find_data_dir(args.data_dir)
    sections = [
        guarded("tests", lambda: tests_section(plan, setup, budget, work)),
        guarded("runs", lambda: runs_section(plan, setup, budget, work, data_dir)),
        guarded("steps", lambda: steps_section(plan, budget)),
        guarded("eval", lambda: eval_section(plan, budget)),
    ]
    failed = [s.title for s in sections if s.status == "failed"]
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - budget.start
    write_atomic(
        out, render(plan, setup, sections, command, started, seconds, work if failed else None)
    )
    checks = [c for s in sections for c in s.checks]
    log(
        f"wrote {out} in {seconds:.0f} s; targets: {sum(c.ok is True for c in checks)} pass, "
        f"{sum(c.ok is False for c in checks)} fail, {sum(c.ok is None for c in checks)} n/a"
        + (f"; failed sections: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0



if __name__ == "__main__":
    sys.exit(main())
