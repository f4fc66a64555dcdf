"""Each run's own paired interval beside the interval over draws, and matched learning that a
weak baseline cannot cap: results.json with and without ``paired_ci`` in one report, a LoRA
stuck at 3% learned next to full finetuning at 15%, a change the probe does not resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from report_runs import write_job

from smfexp.reporting import collect_runs, write_report
from smfexp.reporting.frontier import grid_table, matched_learning
from smfexp.reporting.scale import matched_vs_n, nested_grid, scale_levels

ITEMS = {"wikitext": 40, "retention": 64, "target": 256}
WIKI_HALF = 0.4  # paired half-width of WikiText's word-ppl change, in %
RET_BELOW, RET_ABOVE = 0.3, 0.1  # retention log-prob change: [rel - 0.3, rel + 0.1] in %
LEARN_HALF = 0.05


def _state(learned: float, wiki: float, retention: float, paired: bool,
           wiki_half: float = WIKI_HALF) -> dict[str, Any]:
    """One scored state: WikiText ppl +``wiki`` %, retention log-prob -``retention`` % (both
    forgetting, + = worse); with ``paired``, the paired intervals of the new runs."""
    before = {"target": {"exact_match": 0.0, "n": 256.0},
              "wikitext": {"word_perplexity": 20.0}, "retention": {"logprob": -1.0}}
    after = {"target": {"exact_match": learned + 0.05, "n": 256.0},
             "wikitext": {"word_perplexity": 20.0 * (1 + wiki / 100)},
             "retention": {"logprob": -1.0 * (1 + retention / 100)}}
    delta = {"target": {"exact_match": learned + 0.05},
             "wikitext": {"word_perplexity": 0.2 * wiki},
             "retention": {"logprob": -retention / 100}}
    state = {"before": before, "after": after, "delta": delta,
             "rel_delta_pct": {"wikitext": {"word_perplexity": wiki},
                               "retention": {"logprob": -retention}},
             "target_beyond_heldout": {"probe": "triviaqa", "delta": {"exact_match": learned}}}
    if paired:
        low, high = wiki - wiki_half, wiki + wiki_half
        state["paired_ci"] = {
            "wikitext": {"word_perplexity": {
                "delta": [0.2 * low, 0.2 * high], "rel_delta_pct": [low, high],
                "n": ITEMS["wikitext"], "resolved": not low <= 0 <= high}},
            "retention": {"logprob": {
                "delta": [(-retention - RET_BELOW) / 100, (-retention + RET_ABOVE) / 100],
                "rel_delta_pct": [-retention - RET_BELOW, -retention + RET_ABOVE],
                "n": ITEMS["retention"], "resolved": True}},
            "target": {"exact_match": {"delta": [learned, learned + 0.1],
                                       "n": ITEMS["target"], "resolved": True}}}
        state["target_beyond_heldout"]["ci"] = {
            "exact_match": [learned - LEARN_HALF, learned + LEARN_HALF]}
    return state


def _write(run_dir: Path, method: str, lr: str, facts_seed: int,
           states: dict[int, tuple[float, float, float]], paired: bool,
           wiki_half: float = WIKI_HALF) -> None:
    """A run whose top level is its last N; ``nested`` holds every N when several."""
    write_job(run_dir, method, lr, facts_seed)
    scored = {n: _state(*v, paired=paired, wiki_half=wiki_half) for n, v in states.items()}
    res = {"status": "ok", "method": method, "selector": "tfidf" if method == "smf" else None,
           "seed": 0, "model": "tiny", "protocol": "harness",
           "data": {"name": "facts", "facts_seed": facts_seed}, "target_probe": "facts",
           "target_metric": "exact_match", "target_higher_is_better": True,
           **scored[max(states)]}
    if len(states) > 1:
        res["nested"] = {str(n): {"facts": n, "step": n, **s} for n, s in scored.items()}
    (run_dir / "results.json").write_text(json.dumps(res))


def _section(md: str, title: str) -> str:
    text = md[md.index(title):]
    return text[:text.index("\n### ", 1)] if "\n### " in text[1:] else text


def _rows(section: str, lead: int = 1) -> dict[tuple[str, ...], list[str]]:
    """Markdown table rows keyed by their first ``lead`` cells."""
    out = {}
    for line in section.splitlines():
        if line.startswith("| ") and "---" not in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out[tuple(cells[:lead])] = cells[lead:]
    return out


# --------------------------------------------------------------------------- old and new runs
# (method, lr, facts_seed) -> (learned, WikiText %, retention %), paired_ci or not: draw 0
# of every point is a new run, draw 1 an old one
MIXED = {("smf", "1", 0): (0.3, 1.0, 0.5, True), ("smf", "1", 1): (0.3, 1.0, 0.5, False),
         ("smf", "2", 0): (0.6, 2.0, 1.0, True), ("smf", "2", 1): (0.6, 2.0, 1.0, False),
         ("full", "1e-5", 0): (0.5, 10.0, 4.0, True), ("full", "1e-5", 1): (0.5, 10.0, 4.0, False),
         ("full", "3e-5", 0): (0.8, 16.0, 6.0, True)}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed") / "multirun"
    for num, ((method, lr, draw), (x, wiki, ret, paired)) in enumerate(MIXED.items()):
        states = {64: (x / 2, wiki / 2, ret / 2), 256: (x, wiki, ret)}
        _write(root / str(num), method, lr, draw, states, paired)
    return root


def test_grid_carries_each_runs_paired_interval_and_nan_for_old_runs(mixed):
    grid = grid_table(collect_runs(mixed))
    new = grid[grid["draw"].str.endswith("facts_seed=0")].set_index(["line", "point", "probe"])
    old = grid[grid["draw"].str.endswith("facts_seed=1")]
    wiki = new.loc[("smf/tfidf", "method.lr=2", "wikitext")]
    assert (wiki["forgetting_lo"], wiki["forgetting_hi"]) == pytest.approx((1.6, 2.4))
    assert wiki["forgetting_resolved"] is True and wiki["probe_n"] == 40
    assert (wiki["learning_lo"], wiki["learning_hi"]) == pytest.approx((0.55, 0.65))
    assert wiki["learning_n"] == 256
    # retention log-prob: higher is better, so the interval flips and swaps with the value
    ret = new.loc[("smf/tfidf", "method.lr=2", "retention")]
    assert ret["forgetting"] == pytest.approx(1.0)
    assert (ret["forgetting_lo"], ret["forgetting_hi"]) == pytest.approx((0.9, 1.3))
    assert ret["probe_n"] == 64
    assert old[["forgetting_lo", "forgetting_hi", "learning_lo", "probe_n"]].isna().all().all()
    assert old["forgetting_resolved"].isna().all()
    assert old["learning_n"].tolist() == [256.0] * len(old)  # after["target"]["n"]


def test_nested_grid_carries_the_paired_interval_per_n(mixed):
    nested = nested_grid(collect_runs(mixed))
    assert sorted(nested["facts"].unique()) == [64, 256]
    row = nested[(nested["facts"] == 64) & (nested["line"] == "full")
                 & (nested["point"] == "method.lr=3e-5") & (nested["probe"] == "wikitext")]
    (row,) = row.itertuples()
    assert (row.forgetting, row.forgetting_lo, row.forgetting_hi) == pytest.approx(
        (8.0, 7.6, 8.4))
    assert nested.loc[nested["draw"].str.endswith("facts_seed=1"), "forgetting_lo"].isna().all()


def test_report_shows_both_kinds_of_runs_side_by_side(mixed, tmp_path):
    md = write_report(mixed, tmp_path / "report").markdown
    change = _rows(_section(md, "### Change (after − before)"), lead=3)
    header = change[("method", "selector", "point")]
    wiki = header.index("Δ wikitext word_perplexity ↓")
    # full lr 3e-5 ran once, with paired_ci: its own interval [3.12, 3.28], half 0.08
    assert change[("full", "-", "method.lr=3e-5")][wiki] == "+3.2 (n=1, no CI; probe ± 0.08)"
    # smf lr 1: one new draw and one old: the interval over draws, and the new run's own
    assert change[("smf", "tfidf", "method.lr=1")][wiki] == "+0.2 ± 0 (n=2; probe ± 0.08)"
    beyond = _rows(_section(md, "### Target change beyond"), lead=3)
    assert beyond[("full", "-", "method.lr=3e-5")][-1] == "+0.8 (n=1, no CI; probe ± 0.05)"
    assert "`probe ± h`: the runs' own paired 95% interval" in md
    items = ("Items per probe: WikiText: 40 articles; retention: 64 paragraphs; "
             "learning: 256 trained facts.")
    assert items in _section(md, "### Target change beyond")
    matched = _section(md, "### Forgetting at matched learning\n")
    assert items in matched
    rows = _rows(matched[matched.index("**wikitext**"):matched.index("**retention**")])
    # 25%: SMF along (0, 0)-(0.3, 1) in both draws; the probe's noise from the new draw
    # only (the old one has none), at the one run bracketing the level: ± 0.4
    assert rows[("25%",)][0] == "+0.83% ± 0 (n=2; probe ± 0.4)"
    assert rows[("25%",)][1] == "+5.00% ± 0 (n=2; probe ± 0.4)"
    ret = _rows(matched[matched.index("**retention**"):])
    assert ret[("25%",)][0] == "+0.42% ± 0 (n=2; probe ± 0.2)"  # (0.1 + 0.3) / 2


def test_old_runs_alone_render_as_before(mixed, tmp_path):
    old = tmp_path / "old"
    for path in mixed.rglob("results.json"):
        res = json.loads(path.read_text())
        if "paired_ci" not in res:
            target = old / path.parent.name
            target.mkdir(parents=True)
            (target / ".hydra").mkdir()
            for f in (path.parent / ".hydra").iterdir():
                (target / ".hydra" / f.name).write_text(f.read_text())
            (target / "results.json").write_text(path.read_text())
    md = write_report(old, tmp_path / "report").markdown
    assert "probe ±" not in md and "†" not in md and "`probe ± h`" not in md
    assert "Items per probe: learning: 256 trained facts." in md  # after["target"]["n"]
    assert "+0.83% (n=1, no CI)" in md


# --------------------------------------------------------------------------- a weak baseline
# (method, lr) -> N -> (learned, WikiText %, retention %): LoRA stays at 3% learned, SMF
# reaches 16% and full finetuning 15% at N = 256
WEAK = {("smf", "1"): {64: (0.10, 0.2, 0.1), 256: (0.08, 0.4, 0.2)},
        ("smf", "2"): {64: (0.30, 0.6, 0.3), 256: (0.16, 2.0, 1.0)},
        ("lora", "1e-4"): {64: (0.02, 1.0, 0.5), 256: (0.02, 1.0, 0.5)},
        ("lora", "3e-4"): {64: (0.03, 2.0, 1.0), 256: (0.03, 2.0, 1.0)},
        ("full", "1e-5"): {64: (0.20, 4.0, 2.0), 256: (0.10, 6.0, 3.0)},
        ("full", "3e-5"): {64: (0.40, 8.0, 4.0), 256: (0.15, 10.0, 5.0)}}


@pytest.fixture(scope="module")
def weak(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weak") / "multirun"
    for num, ((method, lr), states) in enumerate(WEAK.items()):
        _write(root / str(num), method, lr, 0, states, paired=True)
    return root


def test_a_weak_baseline_does_not_cap_the_comparison_with_a_strong_one(weak, tmp_path):
    md = write_report(weak, tmp_path / "report").markdown
    matched = _section(md, "### Forgetting at matched learning\n")
    assert "smf/tfidf vs lora at 1%, 2%, 3% (lora reaches 3%" in matched
    assert "smf/tfidf vs full at 5%, 10%, 15% (full reaches 15%" in matched
    rows = _rows(matched[matched.index("**wikitext**"):matched.index("**retention**")])
    assert rows[("learned",)] == ["smf/tfidf", "lora", "full", "smf/tfidf / best baseline",
                                  "smf/tfidf vs best baseline: 95% CIs"]
    assert [k[0] for k in rows if k[0].endswith("%")] == ["1%", "2%", "3%", "5%", "10%", "15%"]
    # 15%: SMF along (0.08, 0.4)-(0.16, 2): 1.8; full along (0.10, 6)-(0.15, 10): 10
    top = rows[("15%",)]
    assert top[0] == "+1.80% (n=1, no CI; probe ± 0.4)"
    assert top[1] == "reaches at most 3% (forgetting +2.00%)"  # never dropped silently
    assert top[2].startswith("+10.00% (n=1, no CI")
    assert top[3:] == ["0.18x (full)", "n<2"]
    # at 2% LoRA (along (0, 0)-(0.02, 1)) forgets less than full: the best baseline there
    assert rows[("2%",)][3] == f"{(0.4 * 0.02 / 0.08) / 1.0:.2f}x (lora)"


def test_the_scale_tables_pair_levels_per_stream_length(weak, tmp_path):
    nested = nested_grid(collect_runs(weak))
    levels = scale_levels(nested)
    # N = 64: SMF 30%, full 40% -> 25%; LoRA 3% -> 1-3%. N = 256: as the top level
    assert levels[64].values == pytest.approx((0.01, 0.02, 0.03, 0.25))
    assert levels[256].values == pytest.approx((0.01, 0.02, 0.03, 0.05, 0.10, 0.15))
    table = matched_vs_n(nested)
    lora = table[(table["line"] == "lora") & (table["probe"] == "wikitext")
                 & (table["facts"] == 256) & (table["level"] == 0.15)].iloc[0]
    assert pd.isna(lora["forgetting"]) and lora["best_learning"] == pytest.approx(0.03)
    md = write_report(weak, tmp_path / "report").markdown
    scale = _section(md, "### Forgetting at matched learning vs stream length")
    rows = _rows(scale[scale.index("**wikitext**"):scale.index("**retention**")], lead=2)
    assert rows[("64", "25%")][1] == "reaches at most 3% (forgetting +2.00%)"
    assert rows[("256", "15%")][-2:] == ["0.18x (full)", "n<2"]
    assert ("64", "5%") not in rows  # N = 64 compares SMF with full at 25%, not in steps
    assert "N=256: Below 25% learned: smf/tfidf vs lora at 1%, 2%, 3%" in scale


# --------------------------------------------------------------------------- not resolved
def test_a_change_inside_the_probes_own_interval_is_marked_not_resolved(tmp_path):
    root = tmp_path / "multirun"
    # SMF: WikiText +0.4% with its own interval ± 0.5 (covers 0); full: +5% ± 0.4
    _write(root / "0", "smf", "1", 0, {256: (0.4, 0.4, 0.1)}, paired=True, wiki_half=0.5)
    _write(root / "1", "full", "1e-5", 0, {256: (0.5, 5.0, 2.0)}, paired=True)
    runs = collect_runs(root)
    grid = grid_table(runs).set_index(["line", "probe"])
    assert not grid.loc[("smf/tfidf", "wikitext"), "forgetting_resolved"]
    assert grid.loc[("full", "wikitext"), "forgetting_resolved"]
    table = matched_learning(grid.reset_index(), (0.25,)).set_index(["line", "probe"])
    smf = table.loc[("smf/tfidf", "wikitext")]
    assert (smf["probe_below"], smf["probe_above"]) == pytest.approx((-0.5, 0.5))
    md = write_report(root, tmp_path / "report").markdown
    matched = _section(md, "### Forgetting at matched learning\n")
    rows = _rows(matched[matched.index("**wikitext**"):matched.index("**retention**")])
    assert rows[("25%",)][0] == "+0.25% (n=1, no CI; probe ± 0.5) †"  # 0.4 * 0.25 / 0.4
    assert rows[("25%",)][1] == "+2.50% (n=1, no CI; probe ± 0.4)"
    assert "† the run's own paired interval covers 0: not resolved by the probe" in matched
    change = _rows(_section(md, "### Change (after − before)"), lead=2)
    wiki = change[("method", "selector")].index("Δ wikitext word_perplexity ↓")
    assert change[("smf", "tfidf")][wiki] == "+0.08 (n=1, no CI; probe ± 0.1) †"
    assert change[("full", "-")][wiki] == "+1 (n=1, no CI; probe ± 0.08)"


def test_flat_intervals_skip_null_blocks_and_nan_bounds():
    from smfexp.reporting.collect import flat_intervals

    assert flat_intervals({"paired_ci": None, "after": {"wikitext": {"n": 40.0}}}) == {
        "items/wikitext": 40.0}
    one_item = {"paired_ci": {"wikitext": {"word_perplexity": {
        "delta": [float("nan"), float("nan")], "n": 1, "resolved": False}}}}
    assert flat_intervals(one_item) == {"items/wikitext": 1.0}  # no interval below 2 items
