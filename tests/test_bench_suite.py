"""The benchmark suite: its plan and its Markdown on made-up results (fast, nothing timed),
and, slow, ``benchmarks/suite.py --quick`` end to end (tiny model, a few rows; minutes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "## Machine",
    "## 1. Fact stream: one fact step",
    "## 2. The SMF fact step per phase",
    "## 3. Fact-stream peak memory (RSS)",
    "## 4. Targets (issue 24)",
    "## 5. Stream wall time and scoring share (real runs)",
    "## 6. Forward pass (old shape)",
    "## 7. Training step (old shape)",
    "## 8. SMF scaling (old shape)",
    "## 9. Peak memory (RSS, old shape)",
    "## 10. Evaluation",
)
NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?(x|%)?$")


def _tables(section: str) -> list[list[dict[str, str]]]:
    """Markdown tables of a section as lists of {header: cell} rows."""
    tables, current, head = [], [], None
    for line in [*section.splitlines(), ""]:
        if not line.startswith("|"):
            if head is not None:
                tables.append(current)
            current, head = [], None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if head is None:
            head = cells
        elif not set(line) <= set("|-: "):
            current.append(dict(zip(head, cells, strict=True)))
    return tables


def _numeric(cell: str) -> bool:
    return bool(NUMBER.match(cell))


@pytest.mark.slow
def test_quick_suite_writes_every_section_with_numbers(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "SMFEXP_DATA_DIR": str(data_dir), "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--quick", "--out", str(out),
           "--json", str(tmp_path / "raw.json")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=3600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    for header in SECTIONS:
        assert header in text, header
    assert "python benchmarks/suite.py --quick" in text
    assert "failed" not in text.lower()
    for key in ("| CPU |", "| cores |", "| bf16 / AMX |", "torch ", "transformers "):
        assert key in text, key

    sections = {s.splitlines()[0]: s for s in text.split("\n## ")[1:]}
    timed = {"1. Fact stream: one fact step": 16, "6. Forward pass (old shape)": 4,
             "7. Training step (old shape)": 12, "8. SMF scaling (old shape)": 6,
             "10. Evaluation": 9}  # fmt: skip
    for title, n_rows in timed.items():
        first = _tables(sections[title])[0]
        medians = [r["median wall (s)"] for r in first if r["median wall (s)"]]
        assert len(medians) >= n_rows and all(_numeric(c) for c in medians), (title, first)
        rss = [r["peak RSS (GiB)"] for r in first if r["peak RSS (GiB)"]]
        assert len(rss) >= n_rows and all(_numeric(c) for c in rss), (title, first)
    memory = _tables(sections["9. Peak memory (RSS, old shape)"])[0]
    assert all(_numeric(r["peak RSS (GiB)"]) for r in memory)
    drift = {r["check"]: r["value"] for r in _tables(sections["10. Evaluation"])[-1]}
    assert all(_numeric(v) for v in drift.values()), drift

    raw = json.loads((tmp_path / "raw.json").read_text())
    assert not [k for k, r in raw["results"].items() if "error" in r]
    assert all(len(r["wall"]) >= 3 for r in raw["results"].values() if "wall" in r)
    phases = _tables(sections["2. The SMF fact step per phase"])[0]
    assert len(phases) == 14 and all(_numeric(c) for c in list(phases[-1].values())[1:3])


# ---------------------------------------------------------------- fast: plan and Markdown
@pytest.fixture(scope="module")
def suite() -> Any:
    """benchmarks/suite.py as a module (it puts benchmarks/ on sys.path itself)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import suite as module

    return module


def _settings(suite: Any, **kw: Any) -> Any:
    args = suite.parse_args(["--quick", "--only", "facts", *kw.pop("argv", [])])
    s = suite.make_settings(args)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def _fact_results(s: Any, full: float, smf: float, smf_large: float,
                  extra_gb: float) -> dict[str, dict[str, Any]]:
    """Made-up child results for every planned fact-stream configuration."""
    from mdtable import GiB
    from suite_plan import plan

    res: dict[str, dict[str, Any]] = {"idle": {"peak_rss": GiB // 2}}
    lo, hi = s.fact_keys[0], s.fact_keys[-1]
    for spec in plan(["facts"], s):
        if spec["section"] == "idle":
            continue
        keys = spec.get("n_keys")
        wall = {"full": full, "lora": full / 2}.get(spec["method"], smf_large if keys == hi
                                                    else smf)
        r: dict[str, Any] = {"wall": [wall] * 3, "cpu": [wall] * 3, "peak_rss": 3 * GiB,
                             "real_tokens": [90, 100, 110], "padded": [[4, 27]] * 3,
                             "trainable": 1000}
        if keys:
            tables = keys**2 * 64 * 4 * 3
            r.update(tables_bytes=tables, peak_rss=int(tables + extra_gb * GiB))
        if spec["section"] == "phases":
            r["phases"] = {"wall": wall, **{k: wall / 20 for k in ("forward", "backward",
                                                                   "logging", "lightning")}}
            r["floors"] = {"forward": wall / 30, "update": 1e-4}
        res[spec["id"]] = r
    assert any(k.startswith(f"facts/smf/{lo}/") for k in res)
    return res


def _rows(section: str) -> dict[str, dict[str, str]]:
    """The targets table, by its first column."""
    return {r["check"]: r for r in _tables(section)[-1]}


def test_plan_lists_every_fact_configuration_once(suite: Any) -> None:
    from cases import CHILDREN
    from suite_plan import plan

    s = _settings(suite, argv=["--fact-keys", "512,1024", "--fact-phrasings", "4,8"])
    specs = plan(["facts"], s)
    ids = [sp["id"] for sp in specs]
    assert len(ids) == len(set(ids))
    assert all(sp["section"] in CHILDREN for sp in specs)
    for prec in ("fp32", "bf16"):
        for p in (4, 8):
            for name in ("smf/512", "smf/1024", "lora", "full"):
                assert f"facts/{name}/p{p}/{prec}" in ids
    assert {i for i in ids if i.startswith("phases/")} == {
        "phases/smf/512/p4/fp32", "phases/smf/1024/p4/fp32", "phases/smf/512/p4/bf16"}
    assert not [i for i in ids if i.startswith(("train/", "forward/", "eval/"))]


def test_fact_overrides_are_the_stream_shape(suite: Any) -> None:
    from bench_facts import fact_overrides

    s = _settings(suite, fact_keys=(512, 1024), fact_top_t=1024)
    smf = fact_overrides({"method": "smf", "n_keys": 1024, "phrasings": 8}, s)
    assert {"method=smf", "data=triviaqa_facts", "data.phrasings_per_step=8", "memory=empty",
            "memory.n_keys=1024", "method.top_t=1024"} <= set(smf)
    full = fact_overrides({"method": "full", "n_keys": None, "phrasings": 4}, s)
    assert not [o for o in full if o.startswith("method.top_t")]


def test_quick_and_option_settings(suite: Any) -> None:
    s = _settings(suite)
    assert s.fact_runs >= 3 and s.fact_phrasings == (4, 8) and s.stream_results is None
    s = _settings(suite, argv=["--fact-keys", "512,1024", "--stream-results", "/x"])
    assert s.fact_keys == (512, 1024) and s.stream_results == "/x"
    with pytest.raises(SystemExit):
        suite.parse_args(["--fact-runs", "2"])
    with pytest.raises(SystemExit):
        suite.parse_args(["--only", "facts,nope"])


@pytest.mark.parametrize(("smf", "large", "extra_gb", "met"), [
    (0.4, 0.42, 1.5, True),
    (0.6, 0.9, 2.5, False),
])
def test_fact_sections_mark_targets_from_the_numbers(suite: Any, smf: float, large: float,
                                                     extra_gb: float, met: bool) -> None:
    s = _settings(suite, fact_keys=(512, 1024))
    report = suite.Report(s, _fact_results(s, 1.0, smf, large, extra_gb))
    text = "\n".join(report.facts())
    sections = {x.splitlines()[0]: x for x in text.split("## ")[1:]}
    steps = _tables(sections["1. Fact stream: one fact step"])[0]
    assert len(steps) == 16 and all(_numeric(r["median wall (s)"]) for r in steps)
    smf_row = next(r for r in steps if r["method"] == "SMF 262K" and r["precision"] == "fp32")
    assert smf_row["vs full (same batch, precision)"] == f"{smf:.3f}x"
    assert smf_row["tokens"] == "100 / 4x27"

    phases = _tables(sections["2. The SMF fact step per phase"])[0]
    assert len(phases) == len(suite.PHASES) + 1
    assert [c for c in phases[0] if c.endswith("(ms)")][:3] == [
        "262K, 4 phr., fp32 (ms)", "1M, 4 phr., fp32 (ms)", "262K, 4 phr., bf16 (ms)"]

    rows = _rows(sections["4. Targets (issue 24)"])
    want = "met" if met else "**not met**"
    assert rows["SMF 262K / full fact step, fp32, 4 phrasings"]["status"] == want
    assert rows["SMF 1M / SMF 262K, fp32, 4 phrasings"]["status"] == want
    rss = next(v for k, v in rows.items() if "peak RSS - value tables" in k)
    assert rss["status"] == want and rss["value"] == f"{extra_gb:.2f} GiB"
    stream = [v for k, v in rows.items() if "stream" in k or "scoring" in k]
    assert len(stream) == 2 and all("not measured" in v["status"] for v in stream)
    assert "--stream-results DIR" in sections["5. Stream wall time and scoring share (real runs)"]


def test_missing_and_failed_configs_do_not_break_the_report(suite: Any) -> None:
    s = _settings(suite, fact_keys=(512, 1024))
    res = _fact_results(s, 1.0, 0.4, 0.4, 1.0)
    res["facts/smf/1024/p4/fp32"] = {"error": "boom", "peak_rss": 1}
    res["phases/smf/1024/p4/fp32"] = {"skipped": "needs ~10 GiB", "peak_rss": 1}
    del res["facts/full/p8/fp32"]
    text = "\n".join(suite.Report(s, res).facts())
    assert "| SMF 1M | 4 | fp32 |" in text and "failed" in text and "not run" in text
    assert "`phases/smf/1024/p4/fp32`: skipped" in text
    rows = _rows(text.split("## 4. ")[1])
    assert rows["SMF 1M / SMF 262K, fp32, 4 phrasings"]["status"] == "n/a"


def _results_json(path: Path, method: str, n_facts: int, wall: float, scoring: float,
                  status: str = "ok", resumed_from: str | None = None) -> None:
    path.mkdir(parents=True)
    third = scoring / 3
    path.joinpath("results.json").write_text(json.dumps({
        "status": status, "method": method, "data": {"n_facts": n_facts},
        "resumed_from": resumed_from,
        "wall_seconds": {"total": wall, "model_load": 1.0, "fit_with_eval": wall - 2},
        "eval_seconds": {"before": third / 2, "after": third / 2},
        "stream": {"points": [{"seconds": third / 2}, {"seconds": third / 2}]},
        "nested": {str(n_facts): {"seconds": third}},
    }))


def test_stream_results_give_wall_time_and_scoring_share(suite: Any, tmp_path: Path) -> None:
    _results_json(tmp_path / "a" / "0", "smf", 1000, 600.0, 60.0)
    _results_json(tmp_path / "a" / "1", "smf", 1000, 800.0, 80.0)
    _results_json(tmp_path / "b", "full", 1000, 1200.0, 480.0)
    _results_json(tmp_path / "c", "smf", 1000, 1.0, 0.0, status="failed")
    _results_json(tmp_path / "a" / "2", "smf", 1000, 5.0, 1.0, resumed_from="last.ckpt")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.json").write_text("{not json")
    _results_json(tmp_path / "elsewhere", "smf", 1000, 9999.0, 1.0)  # not a folder asked for
    folders = ",".join(str(tmp_path / f) for f in "abcd")
    s = _settings(suite, fact_keys=(512, 1024), stream_results=folders)
    text = "\n".join(suite.Report(s, _fact_results(s, 1.0, 0.4, 0.4, 1.0)).facts())
    table = {r["method"]: r for r in _tables(text.split("## 5. ")[1])[0]}
    assert table["smf"]["runs"] == "2" and table["smf"]["median wall (min)"] == "11.7"
    assert table["smf"]["scoring share"] == "10%" and table["full"]["scoring share"] == "40%"
    rows = _rows(text.split("## 4. ")[1].split("## 5. ")[0])
    wall = next(v for k, v in rows.items() if "1000-fact" in k)
    share = next(v for k, v in rows.items() if "scoring share" in k)
    assert (wall["value"], wall["status"]) == ("11.7 min", "met")
    assert (share["value"], share["status"]) == ("40%", "**not met**")


def test_phase_clock_counts_nested_calls_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench_facts

    ticks = iter(range(100))
    monkeypatch.setattr(bench_facts.time, "perf_counter", lambda: float(next(ticks)))
    clock = bench_facts.PhaseClock()
    inner = clock.wrap("logging", lambda: None)
    outer = clock.wrap("sparse_rest", lambda: inner())
    outer()  # ticks: outer 0 .. inner 1-2 .. outer 3
    assert clock.take() == {"sparse_rest": 2.0, "logging": 1.0}
    assert clock.take() == {}
