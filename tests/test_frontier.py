"""Frontiers and forgetting at matched learning, against hand-computed points."""

from __future__ import annotations

import pandas as pd
import pytest

from smfexp.reporting.frontier import (
    Point,
    forgetting_at,
    frontier,
    grid_point,
    matched_learning,
    matched_markdown,
)


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


def test_grid_point_drops_the_line_and_the_seed():
    assert grid_point("method=smf selector=tfidf method.lr=300 seed=1") == "method.lr=300"
    assert grid_point("seed=0") == "defaults" and grid_point(None) == "defaults"


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


def test_matched_table_averages_seeds_and_says_not_reached():
    table = matched_learning(_grid(), levels=(0.5, 0.75)).set_index(["line", "level"])
    # seed 0: full at 0.5 = 1 + 0.2/0.5 * 3 = 2.2; seed 1 (x + 0.02): 1 + 0.18/0.5 * 3 = 2.08
    assert table.loc[("full", 0.5), "forgetting"] == pytest.approx((2.2 + 2.08) / 2)
    assert table.loc[("full", 0.5), "seeds"] == 2
    assert pd.isna(table.loc[("smf/tfidf", 0.75), "forgetting"])  # SMF stops at 0.6 / 0.62
    assert pd.isna(table.loc[("lora", 0.5), "forgetting"])
    text = matched_markdown(_grid(), levels=(0.5,))
    assert "not reached" in text
    smf = (0.2 + (0.2 / 0.3) * 0.3 + 0.2 + (0.18 / 0.3) * 0.3) / 2  # 0.39
    assert f"{smf / ((2.2 + 2.08) / 2):.2f}x" in text  # SMF / best baseline reaching 50%
