"""One section of the results file per measurement, and the guard that runs it: a failing
section is recorded (type and first line of its error) and the rest of the check still runs."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field


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
