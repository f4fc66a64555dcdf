"""Frontiers and forgetting at matched learning against hand-computed points; the report,
the stream curves and the notebook on a partial frontier sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from smfexp.reporting import collect_runs, stream_keys, write_report
from smfexp.reporting.frontier import (
    Point,
    forgetting_at,
    frontier,
    grid_point,
    grid_table,
    matched_learning,
    matched_markdown,
)
from smfexp.reporting.plots import curve_means
from smfexp.reporting.stream import stream_points, stream_target_metric

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "forgetting_dashboard.ipynb"


def test_monotone_grid_interpolates_between_its_points_and_stops_at_the_last():
    front = frontier([Point(0.4, 3.0), Point(0.2, 1.0), Point(0.6, 9.0)])
    assert front == [Point(0, 0), Point(0.2, 1.0), Point(0.4, 3.0), Point(0.6, 9.0)]
    assert forgetting_at(front, 0.1) == pytest.approx(0.5)  # from the base at the origin
    assert forgetting_at(front, 0.25) == pytest.approx(1.5)
    assert forgetting_at(front, 0.5) == pytest.approx(6.0)
    assert forgetting_at(front, 0.6) == pytest.approx(9.0)
    assert forgetting_at(front, 0.75) is None  # not reached


def test_dominated_points_leave_the_frontier():
    # lr 3 learns less than lr 2 and forgets more; (0.5, 0.5) beats (0.2, 1.0) on both axes
    front = frontier([Point(0.2, 1.0), Point(0.1, 2.0), Point(0.5, 0.5)])
    assert front == [Point(0, 0), Point(0.5, 0.5)]
    assert forgetting_at(front, 0.25) == pytest.approx(0.25)


def test_negative_forgetting_beats_the_base():
    front = frontier([Point(0.3, -1.0), Point(0.6, 2.0)])
    assert front == [Point(0.3, -1.0), Point(0.6, 2.0)]
    assert forgetting_at(front, 0.25) == pytest.approx(-1.0)  # learning 0.3 at -1% is there
    assert forgetting_at(front, 0.45) == pytest.approx(0.5)


def test_the_plotted_frontier_starts_at_the_base_even_when_a_point_beats_it():
    from smfexp.reporting.frontier import frontier_figure

    grid = pd.DataFrame([{"line": "smf/tfidf", "point": "p0", "probe": "wikitext", "seed": 0,
                          "learning": 0.5, "forgetting": -0.2}])
    (ax,) = frontier_figure(grid).axes
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "smf/tfidf"]
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == [(0, 0), (50, -0.2)]


def test_grid_point_drops_the_line_and_the_seed():
    assert grid_point("method=smf selector=tfidf method.lr=300 seed=1") == "method.lr=300"
    assert grid_point("method.selector=kl background.n=256") == "background.n=256"  # the line
    assert grid_point("seed=0") == "defaults" and grid_point(None) == "defaults"
    # the replicates of one setting launched with their overrides in another order
    assert grid_point("seed=2 method.lr=2e-5 data.n_facts=256") == grid_point(
        "data.n_facts=256 method.lr=2e-5 seed=0")


def _grid() -> pd.DataFrame:
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        for line, pts in {"smf/tfidf": [(0.3, 0.2), (0.6, 0.5)],
                          "full": [(0.3, 1.0), (0.8, 4.0)],
                          "lora": [(0.2, 2.0)]}.items():
            for i, (x, y) in enumerate(pts):
                rows.append({"line": line, "point": f"p{i}", "probe": "wikitext", "seed": seed,
                             "learning": x + shift, "forgetting": y})
    return pd.DataFrame(rows)


def test_matched_table_averages_seeds_and_says_how_far_a_short_line_gets():
    table = matched_learning(_grid(), levels=(0.5, 0.75)).set_index(["line", "level"])
    # seed 0: full at 0.5 = 1 + 0.2/0.5 * 3 = 2.2; seed 1 (x + 0.02): 1 + 0.18/0.5 * 3 = 2.08
    assert table.loc[("full", 0.5), "forgetting"] == pytest.approx((2.2 + 2.08) / 2)
    assert table.loc[("full", 0.5), "draws"] == 2
    assert pd.isna(table.loc[("smf/tfidf", 0.75), "forgetting"])  # SMF stops at 0.6 / 0.62
    assert pd.isna(table.loc[("lora", 0.5), "forgetting"])
    # LoRA's best point: (0.2, 2) and (0.22, 2) -> 21% learned, forgetting +2%
    assert table.loc[("lora", 0.5), "best_learning"] == pytest.approx(0.21)
    text = matched_markdown(_grid(), levels=(0.5,))
    assert "reaches at most 21% (forgetting +2.00%)" in text and "not reached" not in text
    smf = (0.2 + (0.2 / 0.3) * 0.3 + 0.2 + (0.18 / 0.3) * 0.3) / 2  # 0.39
    assert f"{smf / ((2.2 + 2.08) / 2):.2f}x (full)" in text  # SMF / the baseline reaching 50%
    assert "probe ±" not in text and "Items per probe" not in text  # no paired intervals


# --------------------------------------------------------------------------- a partial sweep
# (method, selector, lr, seed) -> (learning beyond held-out, wikitext word-ppl change %)
# LoRA's grid is not monotone: lr 3e-4 learns less than 1e-4 and forgets more (dominated).
# The full run is an old one: no stream, no gain beyond held-out (its plain Δ is learning).
SWEEP = {
    ("smf", "tfidf", "1", 0): (0.2, 1.0),
    ("smf", "tfidf", "2", 0): (0.6, 3.0),
    ("smf", "tfidf", "1", 1): (0.2, 1.0),
    ("smf", "tfidf", "2", 1): (0.6, 3.0),
    ("lora", None, "1e-4", 0): (0.3, 6.0),
    ("lora", None, "3e-4", 0): (0.2, 8.0),
    ("full", None, "1e-5", 0): (0.8, 16.0),
}
OLD_RUN = ("full", None, "1e-5", 0)
FORMAT_GAIN = 0.1  # what the held-out questions gained too: not facts, never "learning"
CLASSES = {"smf": "SparseMemoryFinetune", "lora": "LoRAFinetune", "full": "FullFinetune"}


def _job(run_dir: Path, method: str, selector: str | None, lr: str, seed: int) -> None:
    hydra = run_dir / ".hydra"
    hydra.mkdir(parents=True)
    overrides = [f"method={method}", f"method.lr={lr}", f"seed={seed}",
                 *([f"selector={selector}"] if selector else [])]
    (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (hydra / "config.yaml").write_text(
        f"seed: {seed}\nmethod:\n  _target_: smfexp.methods.{method}.{CLASSES[method]}\n"
        f"  lr: {lr}\n" + (f"  selector: {selector}\n" if selector else "")
        + "model:\n  name: tiny\neval:\n  protocol: harness\n")


def _results(method: str, selector: str | None, seed: int, learned: float,
             forgetting: float, old: bool) -> dict:
    gain = learned if old else learned + FORMAT_GAIN
    before = {"target": {"exact_match": 0.0, "n": 10.0}, "wikitext": {"word_perplexity": 20.0}}
    after = {"target": {"exact_match": gain, "n": 10.0},
             "wikitext": {"word_perplexity": 20.0 * (1 + forgetting / 100)}}
    res = {"status": "ok", "method": method, "selector": selector, "seed": seed,
           "model": "tiny", "protocol": "harness", "data": {"name": "facts"},
           "target_probe": "facts", "target_metric": "exact_match",
           "target_higher_is_better": True, "before": before, "after": after,
           "delta": {"target": {"exact_match": gain},
                     "wikitext": {"word_perplexity": 20.0 * forgetting / 100}},
           "rel_delta_pct": {"wikitext": {"word_perplexity": forgetting}}}  # target from 0
    if not old:
        res["target_beyond_heldout"] = {"delta": {"exact_match": learned}}
        res["stream"] = {"every_n_facts": 5, "points": [
            {"step": s, "facts": f, "seconds": 0.1, "scores": {
                "target": {"exact_match": learned * f / 10, "n": 10.0},
                "wikitext": {"word_perplexity": 20.0 * (1 + forgetting * f / 1000)}}}
            for s, f in ((0, 0), (5, 5), (10, 10))]}
    return res


@pytest.fixture(scope="module")
def partial_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frontier sweep mid-way: 7 finished jobs, one failed, one still running."""
    root = tmp_path_factory.mktemp("frontier") / "multirun"
    for num, ((method, selector, lr, seed), (x, y)) in enumerate(SWEEP.items()):
        _job(root / str(num), method, selector, lr, seed)
        res = _results(method, selector, seed, x, y, old=(method, selector, lr, seed) == OLD_RUN)
        (root / str(num) / "results.json").write_text(json.dumps(res))
    _job(root / "7", "full", None, "1e-4", 0)
    (root / "7" / "results.json").write_text(json.dumps(
        {"status": "failed", "method": "full", "seed": 0,
         "error": "RuntimeError: CUDA out of memory\ntraceback"}))
    _job(root / "8", "smf", "tfidf", "4", 0)  # running: Hydra config, no results.json yet
    return root


def test_grid_uses_the_gain_beyond_held_out_and_drops_unfinished_runs(partial_sweep):
    grid = grid_table(collect_runs(partial_sweep))
    assert len(grid) == len(SWEEP)  # one probe, finished runs only
    smf = grid[(grid["line"] == "smf/tfidf") & (grid["point"] == "method.lr=2")]
    assert smf["learning"].tolist() == pytest.approx([0.6, 0.6])  # not 0.7 (plain Δ)
    full = grid[grid["line"] == "full"]
    assert full["learning"].tolist() == pytest.approx([0.8])  # old run: its plain Δ


def test_report_on_a_partial_sweep(partial_sweep, tmp_path):
    from matplotlib.image import imread

    report = write_report(partial_sweep, tmp_path / "report")
    for name in ("frontier.png", "stream.png"):
        assert imread(report.files[name]).shape[1] > 300, name
    md = report.markdown
    matched = md[md.index("### Forgetting at matched learning"):]
    rows = {cells[0]: cells for line in matched.splitlines()
            if (cells := [c.strip() for c in line.strip("|").split("|")])[0].endswith("%")}
    header = next(line for line in matched.splitlines() if line.startswith("| learned"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "learned", "smf/tfidf", "lora", "full", "smf/tfidf / best baseline",
        "smf/tfidf vs best baseline: 95% CIs"]
    # 25%: SMF 1 + (0.05 / 0.4) * 2 in both seeds; LoRA along (0, 0)-(0.3, 6) (lr 3e-4 is
    # dominated); full along (0, 0)-(0.8, 16); best baseline 5.0 (a tie: the first named),
    # one draw: no interval
    assert rows["25%"][1:] == ["+1.25% ± 0 (n=2)", "+5.00% (n=1, no CI)",
                               "+5.00% (n=1, no CI)", "0.25x (lora)", "n<2"]
    # LoRA reaches 30%: SMF meets full alone at 50%, LoRA says how far it got
    assert rows["50%"][1:] == ["+2.50% ± 0 (n=2)", "reaches at most 30% (forgetting +6.00%)",
                               "+10.00% (n=1, no CI)", "0.25x (full)", "n<2"]
    assert "75%" not in rows  # SMF reaches 60%: no pair compares at 75%
    problems = md[md.index("### Failed / incomplete runs"):]
    assert "`7` (full, seed 0): failed: RuntimeError: CUDA out of memory" in problems
    assert "`8` (smf/tfidf, seed 0): incomplete" in problems
    assert "traceback" not in problems


def test_stream_points_average_the_seeds(partial_sweep):
    runs = collect_runs(partial_sweep)
    assert stream_keys(runs) == ["stream/facts", "stream/target/exact_match",
                                 "stream/wikitext/word_perplexity"]
    long = stream_points(runs)
    assert set(long["line"]) == {"smf/tfidf", "lora"}  # the old full run has no stream
    assert "n" not in set(long["metric"])  # row counts are no curve
    mean = curve_means(long, ["line", "point", "probe", "facts"]).set_index(
        ["line", "point", "probe", "facts"])
    smf = mean.loc[("smf/tfidf", "method.lr=2", "target", 5)]
    assert (smf["value"], smf["ci"], smf["n"]) == (pytest.approx(0.3), 0.0, 2)
    lora = mean.loc[("lora", "method.lr=1e-4", "wikitext", 10)]
    assert lora["value"] == pytest.approx(20.0 * 1.06) and pd.isna(lora["ci"])
    assert stream_target_metric(runs) == "exact_match"


def _notebook_code() -> str:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("old", [False, True], ids=["stream", "old-runs"])
def test_notebook_code_on_a_partial_sweep(partial_sweep, tmp_path, monkeypatch, capsys, old):
    ipy = pytest.importorskip("IPython.display")
    root = partial_sweep
    if old:  # the same sweep as written before the stream and the held-out control
        root = tmp_path / "old"
        shutil.copytree(partial_sweep, root)
        for path in root.rglob("results.json"):
            res = json.loads(path.read_text())
            res.pop("stream", None), res.pop("target_beyond_heldout", None)
            path.write_text(json.dumps(res))
    monkeypatch.setenv("SMFEXP_REPORT_DIR", str(root))
    monkeypatch.delenv("SMFEXP_WANDB_PROJECT", raising=False)
    shown: list = []  # what the cells display (outside a kernel display() only prints a repr)
    monkeypatch.setattr(ipy, "display", lambda *objs, **_: shown.extend(objs))
    exec(compile(_notebook_code(), str(NOTEBOOK), "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert f"{root}: 9 runs" in out
    assert ("stream: no per-step probe scores" in out) == old
    assert "frontier: no finished run" not in out
    markdown = "\n".join(o.data for o in shown if isinstance(o, ipy.Markdown))
    assert "Forgetting at matched learning" in markdown  # the frontier in both cases
    # old runs: learning falls back to the plain gain, which includes the format's 0.1
    assert ("+1.25% ± 0 (n=2)" in markdown) == (not old)
    images = [o for o in shown if isinstance(o, ipy.Image)]
    assert len(images) == (3 if old else 4)  # pareto, training curves, frontier (+ stream)
