"""The W&B workspace's frontier and stream panels, built offline from key lists alone."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("wandb_workspaces")

from smfexp.reporting.wandb_workspace import (
    panel_metric_keys,
    spec_json,
    workspace_spec,
)

NEW = [  # what a run with a fact stream logs (runner.summary_metrics + the stream callback)
    "before/target/exact_match", "after/target/exact_match", "delta/target/exact_match",
    "beyond_heldout/target/exact_match", "delta/target/n",
    "delta/wikitext/word_perplexity", "rel_delta_pct/wikitext/word_perplexity",
    "rel_delta_pct/wikitext/bits_per_byte",
    "delta/triviaqa/exact_match", "rel_delta_pct/triviaqa/answer_logprob",
    "stream/facts", "stream/target/exact_match", "stream/wikitext/word_perplexity",
    "stream/wikitext/bits_per_byte", "stream/triviaqa/answer_logprob", "train/loss",
]
OLD = [  # a run from before the stream and the held-out control: no such panels
    "before/target/acc", "after/target/acc", "delta/target/acc",
    "delta/wikitext/word_perplexity", "rel_delta_pct/wikitext/word_perplexity", "train/loss",
]


def _section(workspace, name: str):
    found = [s for s in workspace.sections if s.name == name]
    assert len(found) == 1, [s.name for s in workspace.sections]
    return found[0]


def test_frontier_panels_use_the_gain_beyond_held_out_and_each_probes_forgetting_metric():
    workspace = workspace_spec("me", "smf", NEW)
    assert panel_metric_keys(workspace) <= set(NEW)
    panels = _section(workspace, "Learning vs forgetting frontier").panels
    axes = {(p.x.name, p.y.name) for p in panels}
    assert axes == {("beyond_heldout/target/exact_match", "rel_delta_pct/wikitext/word_perplexity"),
                    ("beyond_heldout/target/exact_match", "rel_delta_pct/triviaqa/answer_logprob")}
    titles = " ".join(p.title for p in panels)
    assert "↑ = more forgetting" in titles and "↓ = more forgetting" in titles  # ppl / logprob


def test_old_runs_get_a_delta_frontier_and_no_stream_section():
    workspace = workspace_spec("me", "smf", OLD)
    assert panel_metric_keys(workspace) <= set(OLD)
    panels = _section(workspace, "Learning vs forgetting frontier").panels
    assert [(p.x.name, p.y.name) for p in panels] == [
        ("delta/target/acc", "rel_delta_pct/wikitext/word_perplexity")]
    assert "Along the stream" not in [s.name for s in workspace.sections]
    # no forgetting % at all (very old runs): no frontier section either
    bare = workspace_spec("me", "smf", ["delta/target/acc", "delta/medmcqa/acc"])
    assert [s.name for s in bare.sections] == ["Target gain vs forgetting"]


def test_stream_panels_plot_each_logged_key_against_the_facts():
    workspace = workspace_spec("me", "smf", NEW)
    panels = _section(workspace, "Along the stream").panels
    assert panels[0].y[0] == "stream/target/exact_match"  # learning first
    assert {p.y[0] for p in panels} == {k for k in NEW if k.startswith("stream/")} - {
        "stream/facts"}
    assert {p.x for p in panels} == {"stream/facts"}
    assert '"xAxis": "stream/facts"' in spec_json(workspace)
    assert json.loads(spec_json(workspace))["section"]["panelBankConfig"]["sections"]

    # without stream/facts logged the curves fall back to the step; only passed keys appear
    no_facts = [k for k in NEW if k != "stream/facts"]
    stream = _section(workspace_spec("me", "smf", no_facts), "Along the stream").panels
    assert {p.x for p in stream} == {"Step"}


def test_metrics_filter_keeps_the_primary_and_the_forgetting_metric():
    workspace = workspace_spec("me", "smf", NEW, metrics={
        "target": ["exact_match"], "wikitext": ["word_perplexity"],
        "triviaqa": ["exact_match"]})
    stream = {p.y[0] for p in _section(workspace, "Along the stream").panels}
    assert stream == {"stream/target/exact_match", "stream/wikitext/word_perplexity",
                      "stream/triviaqa/answer_logprob"}  # bits_per_byte filtered out
    frontier = _section(workspace, "Learning vs forgetting frontier").panels
    assert {p.y.name for p in frontier} == {"rel_delta_pct/wikitext/word_perplexity",
                                            "rel_delta_pct/triviaqa/answer_logprob"}
    none = workspace_spec("me", "smf", NEW, metrics={"target": ["acc"]})
    assert "Learning vs forgetting frontier" not in [s.name for s in none.sections]
