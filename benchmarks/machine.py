"""The machine a benchmark ran on: CPU model and flags, cores, memory, load, library
versions (the suite's "Machine" table)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

from bench_sparse_update import _available_gb

from smfexp.utils.precision import cpu_has_fast_bf16


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def mem_total_gb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    flags = cpu_flags()
    load = "n/a"
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "flags": {f: f in flags for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
        "fast_bf16": cpu_has_fast_bf16(),
        "mem_total_gb": mem_total_gb(),
        "mem_available_gb": _available_gb(),
        "loadavg": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            p: version(p) for p in ("torch", "transformers", "lightning", "peft", "lm_eval")
        },
    }
