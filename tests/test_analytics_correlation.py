"""Cross-symbol return correlation: hand-worked coefficients, alignment over gaps, the graph."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dm_assets.analytics.correlation import aligned_returns, compute_correlation, correlation_graph

REL = 1e-9
MIN = 60_000


def from_returns(r: list[float], drop: tuple[int, ...] = ()) -> pd.DataFrame:
    close = 100 * np.exp(np.concatenate([[0.0], np.cumsum(r)]))
    df = pd.DataFrame(
        {"open_time": np.arange(len(close)) * MIN, "open": close, "high": close, "low": close, "close": close}
    )
    return df.drop(index=list(drop)).reset_index(drop=True)


X = [0.01, 0.02, 0.03, 0.04]
Y = [0.01, 0.03, 0.02, 0.04]  # centred: x = (−1.5, −.5, .5, 1.5), y = (−1.5, .5, −.5, 1.5); r = 4/5


def test_hand_computed_coefficients() -> None:
    data = {
        "BBB": from_returns(Y),
        "AAA": from_returns(X),
        "CCC": from_returns([-v for v in X]),
        "DDD": from_returns([2 * v + 0.001 for v in X]),
    }
    [res] = compute_correlation(data, "1m", windows=[4], threshold=0.9)
    assert res.symbols == ["AAA", "BBB", "CCC", "DDD"]
    m = res.matrix
    assert m[0][1] == pytest.approx(0.8, rel=REL) and m[1][0] == pytest.approx(0.8, rel=REL)
    assert m[0][2] == pytest.approx(-1.0, rel=REL) and m[0][3] == pytest.approx(1.0, rel=REL)
    assert [m[i][i] for i in range(4)] == [1.0, 1.0, 1.0, 1.0]
    assert res.observations == 4 and res.insufficient_data is False
    assert res.graph["nodes"] == ["AAA", "BBB", "CCC", "DDD"]
    edges = {(e["source"], e["target"]): e["weight"] for e in res.graph["edges"]}
    assert set(edges) == {("AAA", "CCC"), ("AAA", "DDD"), ("CCC", "DDD")}  # |0.8| < 0.9 is left out
    assert edges[("AAA", "CCC")] == pytest.approx(-1.0, rel=REL)
    json.dumps(res.to_dict(), allow_nan=False)


def test_graph_threshold_is_inclusive() -> None:
    corr = np.array([[1.0, 0.8], [0.8, 1.0]])
    assert correlation_graph(["A", "B"], corr, 0.8)["edges"] == [{"source": "A", "target": "B", "weight": 0.8}]


def test_windows_and_inner_join_over_gaps() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 0.01, 30), rng.normal(0, 0.01, 30)
    data = {"A": from_returns(list(a)), "B": from_returns(list(b), drop=(20,))}
    wide, excluded = aligned_returns(data, "1m")
    # B's bar 20 is missing: returns ending at bars 20 and 21 do not exist for B, so those rows go for all
    assert excluded == [] and len(wide) == 28 and {20 * MIN, 21 * MIN}.isdisjoint(wide.index)
    short, full = compute_correlation(data, "1m", windows=[5, 30], min_observations=5)
    keep = [i for i in range(30) if i not in (19, 20)]  # return i ends at bar i + 1
    assert full.observations == 28
    assert full.matrix[0][1] == pytest.approx(np.corrcoef(a[keep], b[keep])[0, 1], rel=REL)
    assert short.observations == 5
    assert short.matrix[0][1] == pytest.approx(np.corrcoef(a[-5:], b[-5:])[0, 1], rel=REL)
    # default needs 90 % of the window: 28 of 30 passes (ceil(27) = 27), 28 of 40 fails
    assert compute_correlation(data, "1m", windows=[30])[0].insufficient_data is False
    assert compute_correlation(data, "1m", windows=[40])[0].insufficient_data is True


def test_constant_symbol_empty_symbol_and_short_data() -> None:
    data = {"A": from_returns(X), "B": from_returns(Y), "FLAT": from_returns([0.0] * 4), "NONE": from_returns([])[:0]}
    [res] = compute_correlation(data, "1m", windows=[4])
    assert res.excluded == ["NONE"] and res.symbols == ["A", "B", "FLAT"]
    assert res.matrix[2] == [None, None, None] and res.matrix[0][2] is None
    assert res.matrix[0][1] == pytest.approx(0.8, rel=REL)
    json.dumps(res.to_dict(), allow_nan=False)
    [long] = compute_correlation(data, "1m", windows=[100])
    assert long.insufficient_data is True and long.matrix == [[None] * 3] * 3 and long.graph["edges"] == []
    [empty] = compute_correlation({}, "1m", windows=[10])
    assert empty.symbols == [] and empty.insufficient_data is True and empty.matrix == []
