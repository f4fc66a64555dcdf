"""Section 1: the fast tests that touch devices, run as written in a pytest child process with
the test device variable set (``SMFEXP_TEST_DEVICE=cuda``)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from mdtable import table

from .env import ROOT, TEST_DEVICE_ENV, Setup, child_env, run_child
from .plan import Budget, Plan
from .sections import Section, skipped


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
