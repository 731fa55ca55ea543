"""Volume analytics on small candles worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dm_assets.analytics.volatility import to_grid
from dm_assets.analytics.volume import compute_volume, spike_ratio, vwap

REL = 1e-9
MIN = 60_000


def frame(drop: tuple[int, ...] = ()) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "open_time": [i * MIN for i in range(5)],
            "open": [10.0, 11, 12, 13, 14],
            "high": [12.0, 12, 13, 15, 16],
            "low": [9.0, 10, 11, 12, 13],
            "close": [11.0, 12, 13, 14, 15],
            "volume": [1.0, 2, 3, 4, 10],
            "quote_volume": [10.5, 23, 37.5, 54, 148],
            "taker_buy_volume": [0.5, 1, 1, 2, 7],
            "taker_buy_quote_volume": [5.0, 11, 12, 27, 100],
            "trades": [3, 4, 5, 6, 20],
        }
    )
    return df.drop(index=list(drop)).reset_index(drop=True)


def test_hand_case() -> None:
    res = compute_volume(frame(), "1m", window=3)
    assert res.total_volume == pytest.approx(20.0, rel=REL)
    assert res.total_quote_volume == pytest.approx(273.0, rel=REL)
    assert res.total_trades == 38
    assert res.sma == pytest.approx(17 / 3, rel=REL)
    # EMA α = 2/(3+1) = 0.5, seed = mean(1, 2, 3) = 2; then 2 + .5(4 − 2) = 3; 3 + .5(10 − 3) = 6.5
    assert res.ema == pytest.approx(6.5, rel=REL)
    assert res.spike_ratio == pytest.approx(10 / 3, rel=REL)  # 10 / mean(2, 3, 4)
    assert res.max_spike_ratio == pytest.approx(10 / 3, rel=REL) and res.max_spike_time == 4 * MIN
    assert res.taker_buy_volume == pytest.approx(11.5, rel=REL)
    assert res.taker_sell_volume == pytest.approx(8.5, rel=REL)
    assert res.taker_delta == pytest.approx(3.0, rel=REL)
    assert res.taker_buy_ratio == pytest.approx(11.5 / 20, rel=REL)
    assert res.vwap == pytest.approx(273 / 20, rel=REL) and res.vwap_method == "quote_volume"
    assert res.insufficient_data is False
    json.dumps(res.to_dict(), allow_nan=False)


def test_vwap_typical_and_mixed_fallback() -> None:
    no_quote = frame().drop(columns=["quote_volume"])
    tp = [(12 + 9 + 11) / 3, (12 + 10 + 12) / 3, (13 + 11 + 13) / 3, (15 + 12 + 14) / 3, (16 + 13 + 15) / 3]
    expected = sum(p * v for p, v in zip(tp, [1, 2, 3, 4, 10], strict=True)) / 20
    assert vwap(to_grid(no_quote, "1m")) == (pytest.approx(expected, rel=REL), "typical")
    mixed = frame()
    mixed.loc[4, "quote_volume"] = np.nan
    assert vwap(to_grid(mixed, "1m")) == (pytest.approx((10.5 + 23 + 37.5 + 54 + tp[4] * 10) / 20, rel=REL), "mixed")
    zero = frame().assign(volume=0.0, quote_volume=0.0)
    assert vwap(to_grid(zero, "1m")) == (None, None)


def test_spike_ratio_zero_baseline_is_undefined() -> None:
    s = spike_ratio(pd.Series([0.0, 0.0, 5.0, 10.0]), 2)
    assert np.isnan(s.iloc[2])  # baseline mean(0, 0) = 0
    assert s.iloc[3] == pytest.approx(10 / 2.5, rel=REL)


def test_missing_candle_is_unknown_not_zero() -> None:
    res = compute_volume(frame(drop=(3,)), "1m", window=3)
    assert res.missing_bars == 1 and res.bars == 4
    assert res.total_volume == pytest.approx(16.0, rel=REL)
    assert res.sma is None and res.spike_ratio is None and res.insufficient_data is True
    # EMA skips the gap: seed 2 at bar 2, then 2 + .5(10 − 2) = 6
    assert res.ema == pytest.approx(6.0, rel=REL)


def test_short_and_empty() -> None:
    res = compute_volume(frame().iloc[:2], "1m", window=3)
    assert res.insufficient_data is True and res.sma is None and res.ema is None
    json.dumps(res.to_dict(), allow_nan=False)
    empty = compute_volume(frame().iloc[:0], "1m", window=3)
    assert empty.bars == 0 and empty.total_volume is None and empty.insufficient_data is True
    json.dumps(empty.to_dict(), allow_nan=False)
