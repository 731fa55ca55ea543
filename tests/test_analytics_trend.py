"""Trend: smoothers, crossovers, log-price slope, horizon returns and Wilder's ADX on hand-worked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dm_assets.analytics.trend import (
    adx,
    compute_trend,
    crossovers,
    ema,
    horizon_bars,
    horizon_returns,
    log_price_slope,
    sma,
    wilder,
)
from dm_assets.analytics.volatility import to_grid

REL = 1e-9
MIN = 60_000


def candles(h, l, c, step: int = MIN, drop: tuple[int, ...] = ()) -> pd.DataFrame:  # noqa: E741
    n = len(c)
    df = pd.DataFrame(
        {
            "open_time": [i * step for i in range(n)],
            "open": np.asarray(c, float),
            "high": np.asarray(h, float),
            "low": np.asarray(l, float),
            "close": np.asarray(c, float),
            "volume": 1.0,
        }
    )
    return df.drop(index=list(drop)).reset_index(drop=True)


def test_sma_and_seeded_ema() -> None:
    x = pd.Series([1.0, 3.0, 2.0, 6.0, 4.0])
    assert sma(x, 3).tolist()[2:] == pytest.approx([2.0, 11 / 3, 4.0], rel=REL)
    e = ema(x, 3)  # α = 0.5, seed = mean(1, 3, 2) = 2 at bar 2; then 2 + .5(6 − 2) = 4; 4 + .5(4 − 4) = 4
    assert e.isna().tolist() == [True, True, False, False, False]
    assert e.tolist()[2:] == pytest.approx([2.0, 4.0, 4.0], rel=REL)
    w = wilder(x, 2)  # α = 1/2, seed = mean(1, 3) = 2; 2 + (2 − 2)/2 = 2; 2 + (6 − 2)/2 = 4; 4 + 0 = 4
    assert w.tolist()[1:] == pytest.approx([2.0, 2.0, 4.0, 4.0], rel=REL)


def test_ema_skips_missing_values() -> None:
    x = pd.Series([1.0, 3.0, np.nan, 2.0, 6.0])
    e = ema(x, 2)  # α = 2/3; seed mean(1, 3) = 2 at bar 1; bar 3: 2 + 2/3·0 = 2; bar 4: 2 + 2/3·4
    assert math.isnan(e.iloc[2])
    assert e.iloc[4] == pytest.approx(2 + 8 / 3, rel=REL)


def test_crossovers_directions_and_touches() -> None:
    idx = pd.Index([0, 60, 120, 180, 240, 300, 360, 420])
    slow = pd.Series(0.0, index=idx)
    fast = pd.Series([-1.0, -1.0, 0.0, 1.0, 1.0, -2.0, 0.0, -1.0], index=idx)
    got = crossovers(fast, slow)
    assert [(c["time"], c["direction"]) for c in got] == [(180, "bullish"), (300, "bearish")]
    assert got[0]["fast"] == 1.0 and got[0]["slow"] == 0.0
    # NaN (undefined average) neither creates nor breaks a cross
    fast2 = pd.Series([np.nan, -1.0, np.nan, 1.0], index=idx[:4])
    assert [c["time"] for c in crossovers(fast2, slow.iloc[:4])] == [180]


def test_log_price_slope_exact_and_gap_aware() -> None:
    b = 0.001
    close = pd.Series(100 * np.exp(b * np.arange(50)))
    slope, r2, n = log_price_slope(close)
    assert slope == pytest.approx(b, rel=1e-9) and r2 == pytest.approx(1.0, rel=1e-9) and n == 50
    c = 100 * np.exp(b * np.arange(50))
    res = compute_trend(candles(c, c, c, drop=(10, 11, 12)), "1m", fast=2, slow=3)
    # x is the grid position: three missing candles do not compress time
    assert res.slope_per_bar == pytest.approx(b, rel=1e-9)
    assert res.slope_annualized == pytest.approx(b * 525_600, rel=1e-9)
    flat = log_price_slope(pd.Series([5.0, 5.0, 5.0]))
    assert flat[0] == 0.0 and flat[1] is None
    assert log_price_slope(pd.Series([5.0]))[:2] == (None, None)


def test_horizon_returns() -> None:
    close = pd.Series([100.0, 110.0, 121.0, 133.1])
    got = horizon_returns(close, [1, 3, 4, "2m"], "1m")
    assert got["1"] == pytest.approx(0.1, rel=REL)
    assert got["3"] == pytest.approx(0.331, rel=REL)
    assert got["4"] is None
    assert got["2m"] == pytest.approx(0.21, rel=REL)
    # start bar missing → None, not a return from some other bar
    assert horizon_returns(pd.Series([100.0, np.nan, 121.0, 133.1]), [2], "1m")["2"] is None
    assert horizon_bars("1d", "1h") == 24 and horizon_bars("1w", "1d") == 7
    with pytest.raises(ValueError):
        horizon_bars("1h", "4h")
    with pytest.raises(ValueError):
        horizon_bars("90s", "1m")


HAND = candles(
    h=[10, 11, 12, 11.5, 10, 10.5],
    l=[8, 9, 10, 9, 8.5, 9],
    c=[9, 10.5, 11, 9.5, 9, 10],
)


def test_adx_hand_computed_period_2() -> None:
    """Wilder's running sums, worked by hand (period 2).

    bar  +DM  −DM  TR   | S(TR)  S(+DM) S(−DM) | +DI      −DI      DX    | ADX
    1    1    0    2    |
    2    1    0    2    | 4      2      0      | 50       0        100   |
    3    0    1    2.5  | 4.5    1      1      | 22.2     22.2     0     | 50
    4    0    0.5  1.5  | 3.75   0.5    1      | 13.3     26.7     100/3 | (50 + 100/3)/2
    5    0.5  0    1.5  | 3.375  0.75   0.5    | 22.2     14.8     20    | (125/3 + 20)/2
    """
    out = adx(to_grid(HAND, "1m"), period=2)
    assert out["adx"].isna().tolist() == [True, True, True, False, False, False]
    assert out["dx"].iloc[2] == pytest.approx(100.0, rel=REL)
    assert out["plus_di"].iloc[3] == pytest.approx(100 / 4.5, rel=REL)
    assert out["adx"].iloc[3] == pytest.approx(50.0, rel=REL)
    assert out["adx"].iloc[4] == pytest.approx((50 + 100 / 3) / 2, rel=REL)
    assert out["plus_di"].iloc[5] == pytest.approx(75 / 3.375, rel=REL)
    assert out["minus_di"].iloc[5] == pytest.approx(50 / 3.375, rel=REL)
    assert out["adx"].iloc[5] == pytest.approx((125 / 3 + 20) / 2, rel=REL)


def test_adx_known_properties() -> None:
    n = 40
    up = np.arange(n, dtype=float)
    rising = adx(to_grid(candles(up + 2, up + 1, up + 1.5), "1m"))
    # +DM = 1 and TR = |H_t − C_{t−1}| = 1.5 every bar; −DM = 0, so DX = ADX = 100
    assert rising["plus_di"].iloc[-1] == pytest.approx(200 / 3, rel=REL)
    assert rising["minus_di"].iloc[-1] == 0.0
    assert rising["adx"].iloc[-1] == pytest.approx(100.0, rel=REL)
    assert rising["adx"].first_valid_index() == 27 * MIN  # 2·14 candles for the first value
    flat = adx(to_grid(candles([5.0] * n, [5.0] * n, [5.0] * n), "1m"))
    assert flat["adx"].iloc[-1] == 0.0 and flat["plus_di"].iloc[-1] == 0.0


def test_compute_trend_result_and_edges() -> None:
    c = [1.0, 3.0, 2.0, 6.0, 4.0, 5.0]
    res = compute_trend(candles(c, c, c), "1m", fast=2, slow=3, horizons=[1, 5, 10], adx_period=2)
    assert res.sma_slow == pytest.approx(5.0, rel=REL)
    assert res.returns == {"1": pytest.approx(0.25, rel=REL), "5": pytest.approx(4.0, rel=REL), "10": None}
    assert res.insufficient_data is False
    json.dumps(res.to_dict(), allow_nan=False)
    short = compute_trend(candles(c[:3], c[:3], c[:3]), "1m")
    assert short.insufficient_data is True and short.sma_slow is None and short.adx is None
    assert short.returns["1h"] is None
    json.dumps(short.to_dict(), allow_nan=False)
    empty = compute_trend(candles([], [], []), "1m")
    assert empty.bars == 0 and empty.insufficient_data is True and empty.sma_crossovers == []
    assert set(compute_trend(candles(c, c, c, step=86_400_000), "1d").returns) == {"1d", "7d", "30d"}
