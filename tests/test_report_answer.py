"""The report opens with its answer (SMF vs the best baseline at matched learning, then its
figure), names no machine path, and draws at most six curves per panel with the legends
outside; committed outputs are relocated by ``--relocate``, once and for all."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.figure import Figure
from report_runs import write_job

from smfexp.reporting import collect_runs, load_runs, write_report
from smfexp.reporting.answer import ANSWER_TITLE, matched_figure
from smfexp.reporting.frontier import (
    choose_levels,
    frontier_figure,
    grid_table,
    matched_learning,
)
from smfexp.reporting.plots import MAX_LINES, pareto_figure, training_curves_figure
from smfexp.reporting.relocate import relocate_tree
from smfexp.reporting.scale import (
    memory_figure,
    memory_points,
    nested_grid,
    scale_figure,
    scale_stream_figure,
)
from smfexp.reporting.stream import stream_figure

WIKI_HALF = 0.4  # each run's own paired interval of its WikiText change, in %


def _state(learned: float, wiki: float, paired: bool) -> dict[str, Any]:
    """A scored state: ``learned`` beyond held-out, WikiText word ppl +``wiki`` %."""
    state: dict[str, Any] = {
        "before": {"target": {"exact_match": 0.0}, "wikitext": {"word_perplexity": 20.0}},
        "after": {"target": {"exact_match": learned + 0.05},
                  "wikitext": {"word_perplexity": 20.0 * (1 + wiki / 100)}},
        "delta": {"target": {"exact_match": learned + 0.05},
                  "wikitext": {"word_perplexity": 0.2 * wiki}},
        "rel_delta_pct": {"wikitext": {"word_perplexity": wiki}},
        "target_beyond_heldout": {"probe": "triviaqa", "delta": {"exact_match": learned}}}
    if paired:
        low, high = wiki - WIKI_HALF, wiki + WIKI_HALF
        state["paired_ci"] = {"wikitext": {"word_perplexity": {
            "delta": [0.2 * low, 0.2 * high], "rel_delta_pct": [low, high], "n": 40}}}
    return state


def _write(run_dir: Path, method: str, lr: str, draw: int, learned: float, wiki: float,
           paired: bool = True, **extra: Any) -> None:
    write_job(run_dir, method, lr, draw)
    res = {"status": "ok", "method": method, "selector": "tfidf" if method == "smf" else None,
           "seed": 0, "model": "tiny", "protocol": "harness",
           "data": {"name": "facts", "facts_seed": draw}, "target_probe": "facts",
           "target_metric": "exact_match", "target_higher_is_better": True,
           "output_dir": str(run_dir), **_state(learned, wiki, paired), **extra}
    (run_dir / "results.json").write_text(json.dumps(res))


# (method, lr) -> (learned, WikiText %), the same in both draws. SMF reaches 80%, full 60%,
# LoRA 30%: SMF meets full at 25 and 50%, LoRA at 25%, where full forgets less (6.25 < 7.5)
GRID = {("smf", "1"): (0.5, 1.0), ("smf", "2"): (0.8, 4.0), ("full", "1e-5"): (0.6, 15.0),
        ("lora", "1e-4"): (0.3, 9.0)}


def _sweep(root: Path, paired: bool = True, grid: dict = GRID) -> Path:
    for num, ((method, lr), (x, y)) in enumerate(grid.items()):
        for draw in (0, 1):
            _write(root / f"{num}_{draw}", method, lr, draw, x, y, paired)
    return root


def _tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table of ``md`` as rows of cells, in order."""
    tables, current = [], []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            if "---" not in line:
                current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def test_summary_opens_with_the_matched_answer(tmp_path):
    report = write_report(_sweep(tmp_path / "runs"), tmp_path / "report")
    md = report.files["summary.md"].read_text()
    assert md.index(ANSWER_TITLE) < md.index("### Scores after training")
    first = _tables(md)[0]
    assert first[0] == ["probe", "learned", "smf/tfidf", "best baseline", "ratio",
                        "95% CIs over draws", "baseline − SMF, paired by draw",
                        "probe's own 95%"]
    # 25%: SMF along (0, 0)-(0.5, 1): 0.5; full along (0, 0)-(0.6, 15): 6.25; LoRA 7.5
    assert first[1] == ["**wikitext** (word_perplexity)", "25%", "+0.50% ± 0 (n=2)",
                        "full: +6.25% ± 0 (n=2)", "0.08x", "separate",
                        "+5.75 ± 0 (n=2) separate", "± 0.4 / ± 0.4"]
    # 50%: SMF at its lr 1 point: 1.0; full 12.5; LoRA (30%) does not compete
    assert first[2] == ["", "50%", "+1.00% ± 0 (n=2)", "full: +12.50% ± 0 (n=2)", "0.08x",
                        "separate", "+11.5 ± 0 (n=2) separate", "± 0.4 / ± 0.4"]
    assert len(first) == 3
    figure = md.index("![forgetting at matched learning](matched.png)")
    assert figure < md.index("### Scores after training")
    assert report.files["matched.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_old_runs_answer_without_the_probe_column_and_no_pair_no_answer(tmp_path):
    md = write_report(_sweep(tmp_path / "old", paired=False), tmp_path / "r1").markdown
    header = _tables(md)[0][0]
    assert header[-1] == "baseline − SMF, paired by draw"
    assert "probe's own" not in md.split("\n###")[1]
    smf_only = {k: v for k, v in GRID.items() if k[0] == "smf"}
    report = write_report(_sweep(tmp_path / "smf", grid=smf_only), tmp_path / "r2")
    assert ANSWER_TITLE not in report.markdown and "matched.png" not in report.files
    assert "### Forgetting at matched learning" in report.markdown  # the lines on their own


def test_draws_that_disagree_overlap_side_by_side_but_separate_paired(tmp_path):
    """The facts of a draw move both methods: SMF 1 / 11 / 21%, full 10 / 20 / 30% at 50%
    learned. Side by side the intervals over draws overlap; draw by draw full finetuning
    forgets 9 points more every time."""
    root = tmp_path / "runs"
    for draw, (smf, full) in enumerate(((2.0, 20.0), (22.0, 40.0), (42.0, 60.0))):
        _write(root / f"smf_{draw}", "smf", "1", draw, 1.0, smf, False)
        _write(root / f"full_{draw}", "full", "1e-5", draw, 1.0, full, False)
    rows = _tables(write_report(root, tmp_path / "report").markdown)[0]
    at_50 = next(r for r in rows if r[1] == "50%")
    assert at_50[5:7] == ["overlap", "+9 ± 0 (n=3) separate"]


def test_a_written_report_names_no_absolute_path(tmp_path):
    runs = _sweep(tmp_path / "runs")
    out = tmp_path / "report"
    write_report(runs, out)
    for name in ("summary.md", "summary.csv", "runs.csv"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text, name
        assert str(runs.resolve()) not in text, name
    written = pd.read_csv(out / "runs.csv")
    assert set(written["run_dir"]) == {f"../runs/{d.name}" for d in runs.iterdir()}
    loaded = load_runs(out)  # the notebook's way back to the runs: relative to the report
    assert all(Path(d).is_dir() for d in loaded["run_dir"])


# --------------------------------------------------------------------------- figures
def _stream(lr: float) -> dict[str, Any]:
    return {"every_n_facts": 64, "points": [
        {"facts": f, "scores": {"target": {"exact_match": f / 512 * lr},
                                "wikitext": {"word_perplexity": 20.0 + f / 64 * lr}},
         "memory": {"rows_touched_share": f / 256 / lr, "touched_background_share": f / 512}}
        for f in (0, 64, 128, 256)]}


def _earlier() -> dict[str, Any]:
    return {"metric": "exact_match", "quarters": [
        {"quarter": q, "facts": [64 * (q - 1), 64 * q], "right_after": 0.5, "end": 0.4}
        for q in (1, 2)]}


def _log(run_dir: Path, lr: float) -> None:
    path = run_dir / "csv" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame([{"step": s, "train/loss": 3.0 - 0.01 * s * lr, "train/lr": lr}
                  for s in range(1, 30)]).to_csv(path, index=False)


@pytest.fixture(scope="module")
def many_points(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SMF with 8 learning rates (more than a panel can tell apart), full with one; streams,
    nested N, earlier facts, memory fill and CSV logs."""
    root = tmp_path_factory.mktemp("many") / "multirun"
    lines = [("smf", lr) for lr in range(1, 9)] + [("full", 1)]
    for num, (method, lr) in enumerate(lines):
        learned, wiki = 0.1 * lr if method == "smf" else 0.5, 0.5 * lr if method == "smf" else 9.0
        nested = {str(n): {"facts": n, **_state(learned * n / 256, wiki * n / 256, True)}
                  for n in (64, 256)}
        run_dir = root / str(num)
        _write(run_dir, method, str(lr), 0, learned, wiki, stream=_stream(lr), nested=nested,
               earlier_facts=_earlier())
        _log(run_dir, lr)
    return root


def _curves(ax: Any) -> list[str]:
    """The labelled curves of a panel: lines and error-bar series, the base marker aside."""
    lines = [ln.get_label() for ln in ax.get_lines()]
    series = [c.get_label() for c in ax.containers]
    return [x for x in [*lines, *series] if x and not x.startswith("_")]


def _outside(fig: Figure) -> None:
    """Every legend (per panel or the figure's) lies clear of every panel's plotting area."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), legend.get_texts()[0]


def test_figures_draw_at_most_six_curves_per_panel_with_legends_outside(many_points):
    runs = collect_runs(many_points)
    grid = grid_table(runs)
    figures = {
        "stream": stream_figure(runs), "scale_stream": scale_stream_figure(runs),
        "memory": memory_figure(memory_points(runs)), "training": training_curves_figure(runs),
        "frontier": frontier_figure(grid),
        "matched": matched_figure(matched_learning(grid, choose_levels(grid).values)),
        "scale": scale_figure(nested_grid(runs)), "pareto": pareto_figure(runs)}
    for name, fig in figures.items():
        assert fig.axes, name
        for ax in fig.axes:
            assert len(_curves(ax)) <= MAX_LINES, (name, _curves(ax))
        _outside(fig)
    # SMF's 8 grid points: two rows of 4 (and one of full), each curve named by its lr
    stream = figures["stream"]
    rows = [ax for ax in stream.axes if ax.get_legend()]
    assert len(rows) == 3
    labels = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in rows]
    assert labels[0] == ["method.lr=1", "method.lr=2", "method.lr=3", "method.lr=4"]
    assert rows[0].get_legend().get_title().get_text() == "smf/tfidf (1 of 2)"


# --------------------------------------------------------------------------- relocation
def _machine_run(run_dir: Path) -> None:
    """A run as another machine wrote it: its own absolute paths in every file."""
    made = "/work/exp9/results/scale/smf/s0"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({
        "output_dir": made, "resumed_from": f"{made}/checkpoints/last.ckpt",
        "trained_artifact": f"{made}/trained",
        "data": {"source": "local:/work/shared/data/triviaqa/sub.jsonl"},
        "retrofit": {"checkpoint": "/root/.cache/smfexp/retrofit/m-1"},
        "replay": {"source": "local:/work/shared/data[c4+wiki]"},
        "note": "/tmp/elsewhere/thing"}, indent=2))
    (run_dir / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    cwd: /work/exp9\n    config_sources:\n"
        "    - path: /work/exp9/conf\n    output_dir: /work/exp9/results/scale/smf/s0\n")
    (run_dir / "train.log").write_text(f"[INFO] - results written to {made}/results.json\n")
    (run_dir / "runs.csv").write_text(
        'run_id,run_dir\n"a,b/s0","/work/exp9/outputs/x,y=[1,2]/s0"\nc,/home/u/repo/results/c\n')


def test_relocate_rewrites_machine_paths_once_and_keeps_the_rest(tmp_path):
    repo = tmp_path / "repo"
    run_dir = repo / "results" / "moved" / "s0"
    _machine_run(run_dir)
    mode = (run_dir / "train.log").stat().st_mode
    done = relocate_tree(repo / "results", repo)
    assert len(done.changed) == 4
    results = json.loads((run_dir / "results.json").read_text())
    assert results["output_dir"] == "results/moved/s0"  # where it is now, in this checkout
    assert results["resumed_from"] == "results/moved/s0/checkpoints/last.ckpt"
    assert results["trained_artifact"] == "results/moved/s0/trained"
    assert results["data"]["source"] == "local:data/triviaqa/sub.jsonl"
    assert results["retrofit"]["checkpoint"] == "$SMFEXP_CACHE/retrofit/m-1"
    assert results["replay"]["source"] == "local:data[c4+wiki]"  # the parts it read
    assert results["note"] == "/tmp/elsewhere/thing"  # no rule names it: left, and listed
    assert done.left == {run_dir / "results.json": ["/tmp/elsewhere/thing"]}
    hydra = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert "cwd: .\n" in hydra and "- path: conf\n" in hydra
    assert "output_dir: results/moved/s0\n" in hydra
    assert (run_dir / "train.log").read_text().endswith("to results/moved/s0/results.json\n")
    runs = pd.read_csv(run_dir / "runs.csv")
    assert runs["run_dir"].tolist() == ["outputs/x,y=[1,2]/s0", "results/c"]
    assert stat.S_IMODE((run_dir / "train.log").stat().st_mode) == stat.S_IMODE(mode)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = relocate_tree(repo / "results", repo)
    assert again.changed == []  # idempotent: a second run (new results beside) changes nothing
    assert before == {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert not [p for p in run_dir.rglob(".*.tmp")]  # no temp files left behind


def test_relocate_cli(tmp_path, capsys):
    from smfexp.report import main

    run_dir = tmp_path / "repo" / "results" / "r" / "s0"
    _machine_run(run_dir)
    assert main(["--relocate", str(tmp_path / "repo" / "results"),
                 "--repo", str(tmp_path / "repo")]) == 0
    err = capsys.readouterr().err
    assert "rewrote 4 file(s)" in err and "/tmp/elsewhere/thing" in err
    assert "/work/" not in (run_dir / "results.json").read_text()
    assert main(["--relocate", str(tmp_path / "missing")]) == 2


def test_the_baseline_that_beats_smf_is_said_once_per_probe_with_its_levels():
    """Replay beating two SMF lines at two levels: one clause naming the levels, the
    baseline's forgetting and both lines' range - not four clauses to read through."""
    from smfexp.reporting.answer import beaten_note
    from smfexp.reporting.frontier import MATCHED_COLUMNS

    rows = [{"line": line, "probe": "wikitext", "level": level, "forgetting": value,
             "ci": 0.1, "draws": 3, "of": 3}
            for level, values in ((0.05, {"smf/tfidf": 0.05, "smf/tfidf+bg": 0.13,
                                          "full+replay": -5.64, "full": 2.0}),
                                  (0.25, {"smf/tfidf": 0.27, "smf/tfidf+bg": 0.66,
                                          "full+replay": -5.64, "full": 9.0}))
            for line, value in values.items()]
    note = beaten_note(pd.DataFrame(rows, columns=MATCHED_COLUMNS))
    assert note == ("**A baseline forgets less than SMF** - wikitext at 5%-25%: full+replay "
                    "-5.64% vs smf/tfidf, smf/tfidf+bg +0.05 to +0.66%.")
