"""The report's statistics and scale sections against hand computations: 95% t-intervals,
matched learning over fact draws, adaptive levels when no method reaches 25%, forgetting vs
stream length from nested results, memory fill and the retention of earlier facts."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from report_runs import write_job

from smfexp.reporting import collect_runs, write_report
from smfexp.reporting.frontier import choose_levels, grid_table, matched_learning
from smfexp.reporting.scale import (
    earlier_facts,
    earlier_summary,
    figure_level,
    matched_vs_n,
    memory_points,
    nested_grid,
    same_length_grid,
    scale_figure,
    scale_levels,
)
from smfexp.reporting.selection import selection_points
from smfexp.reporting.stats import MeanCI, mean_ci, overlap, t_quantile
from smfexp.reporting.write_load import write_load_figure, write_load_points

T2 = 4.302652729911275  # t_{0.975, 2}: 3 draws


# --------------------------------------------------------------------------- statistics
def test_t_interval_matches_a_hand_computation():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # 1.29099
    assert (ci.mean, ci.n) == (2.5, 4)
    assert ci.half == pytest.approx(3.182446 * sd / 2, rel=1e-6)
    assert mean_ci([0.1, 0.2, 0.3]).half == pytest.approx(T2 * 0.1 / math.sqrt(3))


def test_one_draw_has_no_interval_and_missing_values_are_skipped():
    one = mean_ci([5.0, None, math.nan])
    assert (one.mean, one.n, one.has_interval) == (5.0, 1, False)
    assert math.isnan(one.half)
    assert mean_ci([]).n == 0


def test_t_table_without_scipy(monkeypatch):
    real_import = builtins.__import__

    def no_scipy(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert t_quantile(2) == pytest.approx(4.303)
    assert t_quantile(11) == pytest.approx(2.228)  # nearest tabulated df below: wider, safe
    assert t_quantile(1000) == pytest.approx(1.960)


def test_overlap_needs_two_intervals():
    assert overlap(MeanCI(1.0, 0.5, 3), MeanCI(1.8, 0.4, 3)) is True
    assert overlap(MeanCI(1.0, 0.5, 3), MeanCI(2.0, 0.4, 3)) is False
    assert overlap(MeanCI(1.0, 0.5, 3), MeanCI(1.2, math.nan, 1)) is None


# --------------------------------------------------------------------------- fake runs
def _state(facts: int, learned: float, forgetting: float) -> dict[str, Any]:
    """A mini results.json: target learned beyond held-out, WikiText ppl +forgetting %."""
    before = {"target": {"exact_match": 0.0}, "wikitext": {"word_perplexity": 20.0}}
    after = {"target": {"exact_match": learned + 0.05},
             "wikitext": {"word_perplexity": 20.0 * (1 + forgetting / 100)}}
    return {"facts": facts, "step": facts, "before": before, "after": after,
            "delta": {"target": {"exact_match": learned + 0.05},
                      "wikitext": {"word_perplexity": 0.2 * forgetting}},
            "rel_delta_pct": {"wikitext": {"word_perplexity": forgetting}},
            "target_beyond_heldout": {"probe": "triviaqa",
                                      "delta": {"exact_match": learned}}}


def _write(run_dir: Path, method: str, lr: str, facts_seed: int,
           states: dict[int, tuple[float, float]], levers: dict[str, float] | None = None,
           **extra: Any) -> None:
    """One run: top level = its last N, ``nested`` = every N when more than one is given."""
    write_job(run_dir, method, lr, facts_seed, levers=levers)
    last = _state(max(states), *states[max(states)])
    res = {"status": "ok", "method": method, "selector": "tfidf" if method == "smf" else None,
           "seed": 0, "model": "tiny", "protocol": "harness", "data": {"name": "facts"},
           "target_probe": "facts", "target_metric": "exact_match",
           "target_higher_is_better": True, **{k: last[k] for k in (
               "before", "after", "delta", "rel_delta_pct", "target_beyond_heldout")}}
    if len(states) > 1:
        res["nested"] = {str(n): _state(n, *v) for n, v in states.items()}
    res.update(extra)
    (run_dir / "results.json").write_text(json.dumps(res))


# --------------------------------------------------------------------------- below 25%
# (method, lr) -> (learning beyond held-out, wikitext ppl change %): nobody reaches 25%
HARD = {("smf", "1"): (0.12, 0.2), ("smf", "2"): (0.18, 0.6),
        ("lora", "1e-4"): (0.11, 4.4), ("full", "1e-5"): (0.22, 8.8)}


@pytest.fixture(scope="module")
def hard_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Harder facts: every method stays below 25% learned; one job still running."""
    root = tmp_path_factory.mktemp("hard") / "multirun"
    for num, ((method, lr), (x, y)) in enumerate(HARD.items()):
        _write(root / str(num), method, lr, 0, {32: (x, y)})
    write_job(root / "9", "smf", "4", 0)  # running: no results.json yet
    return root


def test_levels_adapt_when_every_method_stays_below_25_percent(hard_sweep, tmp_path):
    grid = grid_table(collect_runs(hard_sweep))
    levels = choose_levels(grid)
    # SMF reaches 18%: with LoRA (11%) steps of 5 up to 11%, with full (22%) up to 18%
    assert levels.values == pytest.approx((0.05, 0.10, 0.15))
    assert "smf/tfidf vs lora at 5%, 10% (lora reaches 11%" in levels.note
    assert "smf/tfidf vs full at 5%, 10%, 15% (smf/tfidf reaches 18%" in levels.note
    table = matched_learning(grid, levels.values).set_index(["line", "level"])
    # one draw each, along (0, 0)-(x, y): y * level / x (SMF: its lr 1 point is the first)
    for line, (x, y) in {"smf/tfidf": (0.12, 0.2), "lora": (0.11, 4.4),
                         "full": (0.22, 8.8)}.items():
        for level in (0.05, 0.10):
            assert table.loc[(line, level), "forgetting"] == pytest.approx(y * level / x)
    md = write_report(hard_sweep, tmp_path / "report").markdown
    matched = md[md.index("### Forgetting at matched learning"):]
    rows = [line for line in matched.splitlines() if line.startswith(("| 5%", "| 10%"))]
    assert len(rows) == 2 and not any("reaches at most" in r for r in rows)
    top = next(line for line in matched.splitlines() if line.startswith("| 15%"))
    assert "reaches at most 11% (forgetting +4.40%)" in top and "(full) |" in top
    assert "| 25%" not in matched  # no row where nobody compares


def test_standard_levels_where_both_of_a_pair_reach_them():
    grid = pd.DataFrame([{"line": ln, "point": "p", "probe": "wikitext", "draw": "d",
                          "learning": x, "forgetting": 1.0} for ln, x in
                         (("smf/tfidf", 0.6), ("full", 0.8), ("lora", 0.26))])
    levels = choose_levels(grid)
    assert levels.values == (0.25, 0.5) and not levels.note  # SMF and full both reach 50%


# --------------------------------------------------------------------------- 3 draws, nested
# (method, lr) -> N -> (learning, wikitext forgetting % at facts_seed 0); draw k adds k to
# the forgetting, so each draw's frontier differs and the interval is hand-computable.
SCALE = {("smf", "1"): {64: (0.4, 1.0), 256: (0.3, 2.0)},
         ("smf", "2"): {64: (0.8, 3.0), 256: (0.6, 5.0)},
         ("full", "1e-5"): {64: (0.5, 10.0), 256: (0.4, 20.0)}}
DRAWS = (0, 1, 2)


def _stream(k: int) -> dict[str, Any]:
    """SMF lr 2's stream: memory fills linearly to 256 facts, the write load grows (1 + k)
    per 64 facts; exact match on seen facts."""
    return {"every_n_facts": 64, "points": [
        {"step": f, "facts": f, "seconds": 1.0,
         "scores": {"target": {"exact_match": f / 512},
                    "wikitext": {"word_perplexity": 20.0 + f / 64}},
         "memory": {"rows_touched_share": f / 256 * (0.5 + 0.1 * k),
                    "touched_background_share": f / 512,
                    "write_load": f / 64 * (1 + k),
                    "background_read_change": f * (1 + k)}}
        for f in (0, 64, 128, 256)]}


def _earlier(k: int) -> dict[str, Any]:
    """Quarter 1 drops 0.1 per draw by the end; quarter 2 was never learned (kept null)."""
    return {"metric": "exact_match", "quarters": [
        {"quarter": 1, "facts": [0, 64], "n": 64, "right_after": 0.6, "end": 0.6 - 0.1 * k,
         "kept": (0.6 - 0.1 * k) / 0.6},
        {"quarter": 2, "facts": [64, 128], "n": 64, "right_after": 0.0, "end": 0.0,
         "kept": None}]}


def _smf(k: int) -> dict[str, Any]:
    """Two memory layers: overlap 0.01 and 0.03 (mean 0.02), background share 0.4 + 0.1 k;
    rows written 1 + k of 4 slots in each layer."""
    return {"slots_per_layer": [4, 4], "updated_rows_per_layer": [1 + k, 1 + k],
            "diagnostics": [{"overlap": 0.01, "touched_background_share": 0.4 + 0.1 * k},
                            {"overlap": 0.03, "touched_background_share": 0.4 + 0.1 * k,
                             "fact_background_share": None}]}


@pytest.fixture(scope="module")
def scale_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "multirun"
    num = 0
    for (method, lr), states in SCALE.items():
        for k in DRAWS:
            shifted = {n: (x, y + k) for n, (x, y) in states.items()}
            extra = {"stream": _stream(k), "earlier_facts": _earlier(k), "smf": _smf(k)} \
                if (method, lr) == ("smf", "2") else {}
            _write(root / str(num), method, lr, k, shifted, **extra)
            num += 1
    return root


def test_three_draws_interpolate_per_draw_then_average(scale_sweep):
    runs = collect_runs(scale_sweep)
    assert sorted(runs["point"].unique()) == ["method.lr=1", "method.lr=1e-5", "method.lr=2"]
    grid = grid_table(runs)  # the top level: N = 256
    table = matched_learning(grid, (0.25,)).set_index("line")
    # SMF draw k: along (0, 0)-(0.3, 2 + k): 0.25 / 0.3 * (2 + k) = 5/3, 5/2, 10/3
    smf = [0.25 / 0.3 * (2 + k) for k in DRAWS]
    sd = pd.Series(smf).std()
    assert table.loc["smf/tfidf", "forgetting"] == pytest.approx(2.5)
    assert table.loc["smf/tfidf", "ci"] == pytest.approx(T2 * sd / math.sqrt(3))
    assert table.loc["smf/tfidf", "draws"] == 3
    # full draw k: 0.25 / 0.4 * (20 + k): mean 13.125, sd 0.625
    assert table.loc["full", "forgetting"] == pytest.approx(13.125)
    assert table.loc["full", "ci"] == pytest.approx(T2 * 0.625 / math.sqrt(3))


def test_summary_rows_are_grid_points_with_intervals_over_draws(scale_sweep, tmp_path):
    report = write_report(scale_sweep, tmp_path / "report")
    summary = report.summary.set_index(["method", "point"])
    smf2 = summary.loc[("smf", "method.lr=2")]
    ppl = [0.2 * (5.0 + k) for k in DRAWS]  # Δ wikitext ppl at 256 facts
    assert smf2["n_ok"] == 3
    assert smf2["delta/wikitext/word_perplexity:mean"] == pytest.approx(sum(ppl) / 3)
    assert smf2["delta/wikitext/word_perplexity:ci"] == pytest.approx(
        T2 * pd.Series(ppl).std() / math.sqrt(3))


def test_forgetting_vs_stream_length(scale_sweep):
    nested = nested_grid(collect_runs(scale_sweep))
    assert sorted(nested["facts"].unique()) == [64, 256]
    assert len(nested) == 3 * len(DRAWS) * 2  # runs x N, one probe
    levels = scale_levels(nested)  # SMF vs full: 50% at N = 64 (full 50%), 40% at 256
    assert {n: lv.values for n, lv in levels.items()} == {64: (0.25, 0.5), 256: (0.25,)}
    assert not any(lv.note for lv in levels.values())
    assert figure_level(nested) == 0.25
    table = matched_vs_n(nested, (0.25,)).set_index(["line", "facts"])
    smf64 = [0.25 / 0.4 * (1 + k) for k in DRAWS]  # 0.625, 1.25, 1.875
    full64 = [0.25 / 0.5 * (10 + k) for k in DRAWS]  # 5, 5.5, 6
    assert table.loc[("smf/tfidf", 64), "forgetting"] == pytest.approx(1.25)
    assert table.loc[("smf/tfidf", 64), "ci"] == pytest.approx(
        T2 * pd.Series(smf64).std() / math.sqrt(3))
    assert table.loc[("full", 64), "forgetting"] == pytest.approx(sum(full64) / 3)
    assert table.loc[("smf/tfidf", 256), "forgetting"] == pytest.approx(2.5)
    assert table.loc[("full", 256), "forgetting"] == pytest.approx(13.125)
    (ax,) = scale_figure(nested).axes
    assert ax.get_xscale() == "log"
    drawn = {c.get_label(): [d.tolist() for d in c.lines[0].get_data()]
             for c in ax.containers}  # label -> [x = N, y = forgetting at 25%]
    assert drawn["smf/tfidf"][0] == [64, 256]
    assert drawn["smf/tfidf"][1] == pytest.approx([1.25, 2.5])
    assert drawn["full"][1] == pytest.approx([5.5, 13.125])


def test_scale_levels_per_stream_length_when_a_method_stays_low_at_large_n():
    rows = [{"line": ln, "point": "p", "probe": "wikitext", "draw": "d", "facts": n,
             "learning": x, "forgetting": 1.0}
            for ln, n, x in (("smf/tfidf", 64, 0.6), ("smf/tfidf", 1000, 0.4),
                             ("lora", 64, 0.3), ("lora", 1000, 0.09))]
    nested = pd.DataFrame(rows)
    levels = scale_levels(nested)
    assert levels[64].values == (0.25,) and not levels[64].note
    assert levels[1000].values == pytest.approx((0.05,))  # LoRA: 9% at N = 1000
    assert "lora reaches 9%" in levels[1000].note
    assert figure_level(nested) == pytest.approx(0.05)  # the level compared at every N


def test_report_writes_the_scale_sections_and_figures(scale_sweep, tmp_path):
    from matplotlib.image import imread

    report = write_report(scale_sweep, tmp_path / "report")
    for name in ("scale.png", "scale_stream.png", "memory_fill.png"):
        assert imread(report.files[name]).shape[1] > 300, name
    md = report.markdown
    for section in ("### Forgetting at matched learning vs stream length",
                    "### Retention of earlier facts", "### Memory fill along the stream"):
        assert section in md


def test_old_runs_get_no_scale_files(hard_sweep, tmp_path):
    report = write_report(hard_sweep, tmp_path / "report")
    assert not {"scale.png", "scale_stream.png", "memory_fill.png", "write_load.png"} \
        & set(report.files)
    assert "vs stream length" not in report.markdown


def test_memory_fill_from_stream_points(scale_sweep):
    memory = memory_points(collect_runs(scale_sweep))
    assert set(memory["line"]) == {"smf/tfidf"}
    rows = memory[(memory["key"] == "rows_touched_share") & (memory["facts"] == 256)]
    assert sorted(rows["value"]) == pytest.approx([0.5, 0.6, 0.7])  # one per draw


def test_write_load_points_join_each_runs_load_with_its_nested_scores(scale_sweep, tmp_path):
    runs = collect_runs(scale_sweep)
    points = write_load_points(nested_grid(runs), memory_points(runs))
    assert set(points["line"]) == {"smf/tfidf"}  # only the runs that recorded a load
    wiki = points[points["probe"] == "wikitext"].set_index("facts")
    # draw k: load (1 + k) per 64 facts -> mean 2 at N = 64, 8 at 256; forgetting 3 + k, 5 + k
    assert wiki["write_load"].to_dict() == pytest.approx({64: 2.0, 256: 8.0})
    assert wiki["learning"].to_dict() == pytest.approx({64: 0.8, 256: 0.6})
    assert wiki["forgetting"].to_dict() == pytest.approx({64: 4.0, 256: 6.0})
    assert set(wiki["n"]) == {3}
    report = write_report(scale_sweep, tmp_path / "report")
    assert "write_load.png" in report.files
    assert "### Learning and forgetting against the write load" in report.markdown


def test_write_load_figure_gives_every_curve_of_a_row_its_own_colour():
    """Eight grid points of one line: two rows of at most six curves, each curve in a row a
    colour of its own and a legend entry naming only the override that differs."""
    points = pd.DataFrame([
        {"line": "smf/tfidf", "point": f"experiment=scale_smf method.lr={lr}", "facts": n,
         "probe": "wikitext", "write_load": n / 64 * lr, "learning": 0.1 * lr,
         "forgetting": float(lr), "n": 1}
        for lr in range(1, 9) for n in (64, 256)])
    fig = write_load_figure(points)
    rows = [ax for ax in fig.axes if ax.get_lines()]
    assert len(rows) == 4  # 2 rows x (learning, wikitext)
    for ax in rows:
        colors = [line.get_color() for line in ax.get_lines() if line.get_label()[0] != "_"]
        assert len(colors) == len(set(colors)) <= 6
    legends = [t.get_text() for leg in fig.legends + [a.get_legend() for a in fig.axes
               if a.get_legend()] for t in leg.get_texts()]
    assert sorted(legends) == sorted(f"method.lr={lr}" for lr in range(1, 9))


def test_every_grid_point_after_each_n_with_its_interval_over_draws(scale_sweep, tmp_path):
    md = write_report(scale_sweep, tmp_path / "report").markdown
    section = md.split("### Every grid point after N facts")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| smf/tfidf")]
    assert [r.split(" | ")[1:3] for r in rows] == [["method.lr=1", "64"], ["method.lr=1", "256"],
                                                  ["method.lr=2", "64"], ["method.lr=2", "256"]]
    # lr 2 after 64 facts: learned 80 points in every draw; WikiText 3 + k: mean 4, sd 1
    half = T2 / math.sqrt(3)
    cells = rows[2].rstrip(" |").split(" | ")
    assert cells[3:5] == ["+80.0 ± 0 (n=3)", f"+4.00% ± {half:.2g} (n=3)"]


def test_memory_table_gives_the_read_weighted_norm_unscaled(scale_sweep, tmp_path):
    md = write_report(scale_sweep, tmp_path / "report").markdown
    section = md.split("### Memory fill along the stream")[1].split("###")[0]
    row = next(line for line in section.splitlines()
               if line.startswith("| smf") and "| 256 |" in line)
    half = T2 * 256 / math.sqrt(3)  # draws 256 x (1, 2, 3): sd 256
    assert row.rstrip(" |").endswith(f"512.0 ± {half:.2g} (n=3)")  # a norm, not a share in %


def test_selection_specificity_is_a_layer_mean_then_a_draw_interval(scale_sweep, tmp_path):
    points = selection_points(collect_runs(scale_sweep))
    assert set(points["line"]) == {"smf/tfidf"}  # only runs with SMF diagnostics
    by_key = {key: sorted(block["value"]) for key, block in points.groupby("key")}
    assert set(by_key) == {"overlap", "touched_background_share", "rows_written"}
    assert by_key["overlap"] == pytest.approx([0.02] * 3)
    assert by_key["touched_background_share"] == pytest.approx([0.4, 0.5, 0.6])
    assert by_key["rows_written"] == pytest.approx([0.25, 0.5, 0.75])
    md = write_report(scale_sweep, tmp_path / "report").markdown
    section = md.split("### Selection specificity")[1]
    half = T2 * 10 / math.sqrt(3)  # draws 40/50/60%: sd 10 points
    assert f"50.00% ± {half:.2g} (n=3)" in section  # touched_background_share


def test_methods_ending_at_different_lengths_compare_at_the_common_one(tmp_path):
    """SMF ran 1000 facts, full finetuning 256: the matched table uses both after 256."""
    root = tmp_path / "multirun"
    _write(root / "0", "smf", "1", 0, {64: (0.4, 1.0), 256: (0.5, 2.0), 1000: (0.5, 50.0)})
    _write(root / "1", "full", "1e-5", 0, {64: (0.5, 10.0), 256: (0.5, 20.0)})
    runs = collect_runs(root)
    grid, note = same_length_grid(grid_table(runs), nested_grid(runs))
    wiki = grid[grid["probe"] == "wikitext"].set_index("line")["forgetting"]
    assert wiki.to_dict() == pytest.approx({"smf/tfidf": 2.0, "full": 20.0})
    assert "after the first 256 facts" in note and "smf/tfidf 1000" in note
    assert note in write_report(root, tmp_path / "report").markdown
    same, none = same_length_grid(grid_table(runs), nested_grid(runs).query("facts <= 256"))
    assert none == "" and len(same) == len(grid_table(runs))  # equal lengths: as it was


def test_a_baseline_with_replay_or_ewc_is_a_line_of_its_own(tmp_path):
    """Replay and EWC baselines meet SMF separately; the better one is named, not merged
    into plain full finetuning's frontier."""
    root = tmp_path / "multirun"
    _write(root / "0", "smf", "1", 0, {256: (0.5, 2.0)})
    _write(root / "1", "full", "1e-5", 0, {256: (0.5, 20.0)})
    _write(root / "2", "full", "1e-5", 0, {256: (0.5, 1.0)}, levers={"replay_k": 4})
    _write(root / "3", "full", "1e-5", 0, {256: (0.5, 8.0)}, levers={"ewc": 10.0})
    _write(root / "4", "lora", "3e-4", 0, {256: (0.5, 30.0)}, levers={"replay_k": 0})
    runs = collect_runs(root)
    grid = grid_table(runs)
    assert set(grid["line"]) == {"smf/tfidf", "full", "full+replay", "full+ewc", "lora"}
    table = matched_learning(grid, (0.25,))
    wiki = table[table["probe"] == "wikitext"].set_index("line")["forgetting"]
    assert wiki.to_dict() == pytest.approx(  # at 25% of each straight frontier's 50%
        {"smf/tfidf": 1.0, "full": 10.0, "full+replay": 0.5, "full+ewc": 4.0, "lora": 15.0})
    answer = write_report(root, tmp_path / "report").markdown.split("###")[1]
    assert "full+replay: +0.50%" in answer and "| 2.00x |" in answer  # replay beats SMF
    assert "A baseline forgets less than SMF** - wikitext at 25%-50%: full+replay +0.50 to " \
        "+1.00% vs smf/tfidf +1.00 to +2.00%" in answer


def test_the_replay_only_control_is_in_the_runs_table_not_on_replays_frontier(tmp_path):
    """fact_weight 0 (replay without the facts) learns nothing and improves WikiText: as a
    point of the replay line it would drag that line's matched forgetting down."""
    root = tmp_path / "multirun"
    _write(root / "0", "smf", "1", 0, {256: (0.5, 2.0)})
    _write(root / "1", "full", "1e-5", 0, {256: (0.5, 1.0)}, levers={"replay_k": 4})
    _write(root / "2", "full", "1e-5", 0, {256: (0.0, -10.0)},
           levers={"replay_k": 4, "fact_weight": 0.0})
    report = write_report(root, tmp_path / "report")
    assert set(report.runs["variant"].dropna()) == {"replay", "replay+nofacts"}
    answer = report.markdown.split("###")[1]
    assert "full+replay: +0.50%" in answer and "nofacts" not in answer


def test_an_smf_lever_is_a_line_of_its_own_not_a_point_of_the_default(tmp_path):
    """A lever run (row bound, background term, fact positions) must not join the default's
    frontier: drawn once, it would move draw 0's interpolation alone."""
    root = tmp_path / "multirun"
    _write(root / "0", "smf", "1", 0, {256: (0.5, 2.0)})
    _write(root / "1", "smf", "1", 0, {256: (0.5, 0.5)}, levers={"row_max_change": 1200})
    _write(root / "2", "smf", "1", 0, {256: (0.5, 1.0)},
           levers={"replay_k": 4, "count_tokens": "fact"})
    _write(root / "3", "full", "1e-5", 0, {256: (0.5, 20.0)})
    grid = grid_table(collect_runs(root))
    table = matched_learning(grid, (0.25,))
    wiki = table[table["probe"] == "wikitext"].set_index("line")["forgetting"]
    assert wiki.to_dict() == pytest.approx(
        {"smf/tfidf": 1.0, "smf/tfidf+bound": 0.25, "smf/tfidf+bg+fact": 0.5, "full": 10.0})


def test_skipping_learned_steps_and_more_steps_per_fact_are_lines_of_their_own():
    """SMF with learned_loss, and any method trained 4 steps per fact where the protocol (and
    the baselines) take 2, must not join the protocol's line at matched learning."""
    from smfexp.reporting.collect import method_variant

    assert method_variant({"learned_loss": 0.5}, "smf", 4) == "skip+steps4"
    assert method_variant({"learned_loss": None, "row_max_change": None}, "smf", 2) is None
    assert method_variant({"replay_k": 4}, "full", 4) == "replay+steps4"


def test_a_baseline_run_once_at_full_length_does_not_mix_lengths(tmp_path):
    """Both methods reach 1000 facts, but full finetuning only in draw 0: the table compares
    every draw after 256 facts instead of mixing a 1000-fact run with 256-fact ones."""
    root = tmp_path / "multirun"
    for draw in (0, 1):
        _write(root / f"smf{draw}", "smf", "1", draw,
               {64: (0.4, 1.0), 256: (0.5, 2.0 + draw), 1000: (0.5, 50.0)})
        _write(root / f"full{draw}", "full", "1e-5", draw, {64: (0.5, 10.0), 256: (0.5, 20.0)})
    _write(root / "full_long", "full", "1e-5", 0, {64: (0.5, 10.0), 256: (0.5, 20.0),
                                                  1000: (0.5, 90.0)})
    runs = collect_runs(root)
    grid, note = same_length_grid(grid_table(runs), nested_grid(runs))
    wiki = grid[grid["probe"] == "wikitext"]
    assert sorted(wiki[wiki["line"] == "smf/tfidf"]["forgetting"]) == pytest.approx([2.0, 3.0])
    assert set(wiki[wiki["line"] == "full"]["forgetting"]) == {20.0}  # never the 1000-fact 90
    assert "after the first 256 facts" in note and "full 256-1000" in note


def test_earlier_facts_table(scale_sweep):
    earlier = earlier_facts(collect_runs(scale_sweep))
    assert len(earlier) == len(DRAWS) * 2
    summary = earlier_summary(earlier).set_index("quarter")
    q1 = summary.loc[1]
    assert (q1["right_after"], q1["right_after_n"]) == (pytest.approx(0.6), 3)
    ends = [0.6, 0.5, 0.4]
    kept = [e / 0.6 for e in ends]
    assert q1["end"] == pytest.approx(0.5)
    assert q1["end_ci"] == pytest.approx(T2 * 0.1 / math.sqrt(3))
    assert q1["kept"] == pytest.approx(sum(kept) / 3)
    assert q1["kept_ci"] == pytest.approx(T2 * pd.Series(kept).std() / math.sqrt(3))
    q2 = summary.loc[2]
    assert q2["kept_n"] == 0 and math.isnan(q2["kept"])  # nothing learned: no ratio


def test_runs_from_before_a_schedule_default_changed_get_their_own_point(tmp_path):
    """The same overrides ran with a constant lr (the old default) and a decaying one: they
    are two grid points, each named by its schedule; a line with one schedule keeps its name."""
    for num, (method, schedule, learned) in enumerate(
            [("full", "constant", 0.3), ("full", "linear", 0.2), ("smf", "linear", 0.4)]):
        _write(tmp_path / str(num), method, "1e-5", 0, {32: (learned, 1.0)},
               data={"name": "facts", "schedule": schedule})
    runs = collect_runs(tmp_path).set_index("run_id")
    assert runs.loc["0", "point"] == "data.schedule=constant method.lr=1e-5"
    assert runs.loc["1", "point"] == "data.schedule=linear method.lr=1e-5"
    assert runs.loc["2", "point"] == "method.lr=1e-5"
