"""Spread statistics and order-book imbalance on hand-worked quotes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from bson.decimal128 import Decimal128

from dm_assets.analytics.spread import (
    compute_spread,
    imbalance_series,
    order_book_imbalance,
    spread_bps,
    time_weighted_mean,
)

REL = 1e-9


def quotes(spreads_bps: list[float], times: list[int], mid: float = 100.0) -> pd.DataFrame:
    half = [mid * s / 1e4 / 2 for s in spreads_bps]
    return pd.DataFrame(
        {
            "event_time": times,
            "bid_price": [mid - h for h in half],
            "bid_qty": 1.0,
            "ask_price": [mid + h for h in half],
            "ask_qty": 1.0,
        }
    )


def test_spread_bps_formula() -> None:
    assert spread_bps(99.99, 100.01) == pytest.approx(2.0, rel=REL)  # 0.02 / 100 × 1e4


def test_stats_and_time_weighting() -> None:
    res = compute_spread(quotes([2, 4, 10], [0, 10, 40]), window_end=100)
    assert res.count == 3 and res.invalid == 0 and res.crossed == 0
    assert res.mean_bps == pytest.approx(16 / 3, rel=REL)
    assert res.median_bps == pytest.approx(4.0, rel=REL)
    assert res.p95_bps == pytest.approx(4 + 0.9 * 6, rel=REL)  # rank 1.9 between 4 and 10
    assert res.min_bps == pytest.approx(2.0, rel=REL) and res.max_bps == pytest.approx(10.0, rel=REL)
    assert res.last_bps == pytest.approx(10.0, rel=REL)
    # durations 10, 30, 60 (last quote stands until the window end)
    assert res.time_weighted_mean_bps == pytest.approx((2 * 10 + 4 * 30 + 10 * 60) / 100, rel=REL)
    assert res.window_start == 0 and res.window_end == 100
    json.dumps(res.to_dict(), allow_nan=False)
    # no window end: the last quote has no duration
    assert compute_spread(quotes([2, 4, 10], [0, 10, 40])).time_weighted_mean_bps == pytest.approx(3.5, rel=REL)


def test_unsorted_invalid_and_crossed_quotes() -> None:
    q = quotes([10, 2, 4], [40, 0, 10])
    bad = pd.DataFrame(
        {"event_time": [5, 6], "bid_price": [0.0, None], "bid_qty": 1.0, "ask_price": [100.0, 100.0], "ask_qty": 1.0}
    )
    crossed = pd.DataFrame(
        {"event_time": [50], "bid_price": [100.01], "bid_qty": 1.0, "ask_price": [99.99], "ask_qty": 1.0}
    )
    res = compute_spread(pd.concat([q, bad, crossed], ignore_index=True), window_end=60)
    assert res.invalid == 2 and res.crossed == 1 and res.count == 4
    assert res.last_bps == pytest.approx(-2.0, rel=REL)
    assert res.time_weighted_mean_bps == pytest.approx((2 * 10 + 4 * 30 + 10 * 10 - 2 * 10) / 60, rel=REL)


def test_time_weighted_mean_edges() -> None:
    assert time_weighted_mean([], [], None) is None
    assert time_weighted_mean([5], [3.0], None) is None
    assert time_weighted_mean([5], [3.0], 9) == 3.0
    with pytest.raises(ValueError):
        time_weighted_mean([5, 10], [1.0, 2.0], 7)


def test_order_book_imbalance() -> None:
    bids = [[98, 5], [100, 2], [99, 1]]  # unsorted on purpose: best two are 100 and 99
    asks = [[102, 3], [101, 1], [100.5, 0]]  # qty 0 is a removed level
    assert order_book_imbalance(bids, asks, levels=2) == pytest.approx((3 - 4) / 7, rel=REL)
    assert order_book_imbalance(bids, asks, levels=10) == pytest.approx((8 - 4) / 12, rel=REL)
    assert order_book_imbalance(bids, [], levels=1) == 1.0
    assert order_book_imbalance([], [], levels=5) is None
    dec = [[Decimal128("100"), Decimal128("2")]]
    assert order_book_imbalance(dec, [["101", "1"]]) == pytest.approx(1 / 3, rel=REL)


def test_imbalance_series_matches_per_message() -> None:
    depth = pd.DataFrame(
        {
            "event_time": [1, 2, 3, 4],
            "bids": [[[98, 5], [100, 2], [99, 1]], [], [["100", "0"]], [[Decimal128("10"), Decimal128("4")]]],
            "asks": [[[102, 3], [101, 1]], [[101, 1]], [], [[11, 1], [12, 1], [13, 1]]],
        }
    )
    s = imbalance_series(depth, levels=2)
    assert s.index.tolist() == [1, 2, 3, 4]
    assert s.iloc[0] == pytest.approx(-1 / 7, rel=REL)
    assert s.iloc[1] == -1.0
    assert pd.isna(s.iloc[2])
    assert s.iloc[3] == pytest.approx((4 - 2) / 6, rel=REL)
    res = compute_spread(quotes([2], [0]), depth=depth, levels=2)
    assert res.imbalance_count == 3
    assert res.imbalance_mean == pytest.approx((-1 / 7 - 1 + 1 / 3) / 3, rel=REL)
    assert res.imbalance_last == pytest.approx(1 / 3, rel=REL)


def test_empty_inputs() -> None:
    res = compute_spread(quotes([], []))
    assert res.count == 0 and res.insufficient_data is True and res.mean_bps is None
    json.dumps(res.to_dict(), allow_nan=False)
    assert imbalance_series(pd.DataFrame(columns=["event_time", "bids", "asks"])).empty


def test_imbalance_and_book_spread_come_from_the_rebuilt_book_when_given() -> None:
    from bson.decimal128 import Decimal128

    def lv(*pairs: tuple[str, str]) -> list[list[Decimal128]]:
        return [[Decimal128(p), Decimal128(q)] for p, q in pairs]

    book = pd.DataFrame(
        {
            "snapshot_time": [10_000, 20_000],
            "bids": [lv(("100", "3"), ("99", "1")), lv(("100", "1"))],
            "asks": [lv(("101", "1")), lv(("101", "3"))],
        }
    )
    # Diffs that would say the opposite: ignored when the book is there.
    depth = pd.DataFrame({"event_time": [15_000], "bids": [[["100", "0.1"]]], "asks": [[["101", "9"]]]})
    res = compute_spread(pd.DataFrame(), window_end=30_000, depth=depth, levels=10, book=book)
    assert res.imbalance_source == "orderbook" and res.book_snapshots == 2 and res.imbalance_count == 2
    assert res.imbalance_mean == pytest.approx(((4 - 1) / 5 + (1 - 3) / 4) / 2)
    assert res.imbalance_last == pytest.approx(-0.5)
    assert res.book_spread_last_bps == pytest.approx(1 / 100.5 * 1e4)
    fallback = compute_spread(pd.DataFrame(), depth=depth, levels=10)
    assert fallback.imbalance_source == "depth_updates" and fallback.imbalance_last == pytest.approx((0.1 - 9) / 9.1)
