"""Volatility estimators against the issue's pinned vector and hand-derived closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dm_assets.analytics.volatility import (
    close_to_close,
    compute_volatility,
    periods_per_year,
    to_grid,
    volatility_series,
    yang_zhang,
)

REL = 1e-9
MIN = 60_000


def candles(o, h, l, c, start: int = 0, step: int = MIN, drop: tuple[int, ...] = ()) -> pd.DataFrame:  # noqa: E741
    n = len(c)
    df = pd.DataFrame(
        {
            "open_time": [start + i * step for i in range(n)],
            "open": np.asarray(o, float),
            "high": np.asarray(h, float),
            "low": np.asarray(l, float),
            "close": np.asarray(c, float),
            "volume": 1.0,
        }
    )
    return df.drop(index=list(drop)).reset_index(drop=True)


PINNED = candles(
    o=[10, 11, 10.5, 12, 13],
    h=[12, 13, 11, 14, 15],
    l=[10, 11, 9, 12, 13],
    c=[11, 12.5, 10, 13.5, 14.5],
)


@pytest.mark.parametrize(
    ("name", "percent"),
    [
        ("parkinson", 10.079713),
        ("garman_klass", 10.225715),
        ("rogers_satchell", 10.187028),
        ("yang_zhang", 20.640059),
    ],
)
def test_pinned_issue_values(name: str, percent: float) -> None:
    res = compute_volatility(PINNED, "1m", window=3)
    # The issue pins six decimals; the conventions reproduce them to the last printed digit.
    assert getattr(res, name) * 100 == pytest.approx(percent, abs=5e-7)


def test_pinned_values_full_precision() -> None:
    """The same vector, written out from the formulas by hand (bars 2..4, window 3)."""
    o = [10, 11, 10.5, 12, 13]
    h = [12, 13, 11, 14, 15]
    lo = [10, 11, 9, 12, 13]
    c = [11, 12.5, 10, 13.5, 14.5]
    bars = [2, 3, 4]
    ln = math.log
    park = math.sqrt(sum(ln(h[i] / lo[i]) ** 2 for i in bars) / 3 / (4 * ln(2)))
    gk = math.sqrt(sum(0.5 * ln(h[i] / lo[i]) ** 2 - (2 * ln(2) - 1) * ln(c[i] / o[i]) ** 2 for i in bars) / 3)
    rs_terms = [ln(h[i] / c[i]) * ln(h[i] / o[i]) + ln(lo[i] / c[i]) * ln(lo[i] / o[i]) for i in bars]
    rs = math.sqrt(sum(rs_terms) / 3)
    on = [ln(o[i] / c[i - 1]) for i in bars]
    oc = [ln(c[i] / o[i]) for i in bars]

    def svar(x: list[float]) -> float:
        m = sum(x) / len(x)
        return sum((v - m) ** 2 for v in x) / (len(x) - 1)

    k = 0.34 / (1.34 + (3 + 1) / (3 - 1))
    yz = math.sqrt(svar(on) + k * svar(oc) + (1 - k) * sum(rs_terms) / 3)
    res = compute_volatility(PINNED, "1m", window=3)
    assert res.parkinson == pytest.approx(park, rel=REL)
    assert res.garman_klass == pytest.approx(gk, rel=REL)
    assert res.rogers_satchell == pytest.approx(rs, rel=REL)
    assert res.yang_zhang == pytest.approx(yz, rel=REL)


def test_close_to_close_hand_case_and_annualization() -> None:
    c = [100.0, 110.0, 99.0, 108.9]  # log returns a, b, a with a = ln 1.1, b = ln 0.9
    df = candles(c, c, c, c)
    a, b = math.log(1.1), math.log(0.9)
    m = (2 * a + b) / 3
    sd = math.sqrt((2 * (a - m) ** 2 + (b - m) ** 2) / 2)
    res = compute_volatility(df, "1m", window=3)
    assert res.close_to_close == pytest.approx(sd, rel=REL)
    assert res.annualized["close_to_close"] == pytest.approx(sd * math.sqrt(525_600), rel=REL)
    assert res.insufficient_data is False
    res_h = compute_volatility(candles(c, c, c, c, step=3_600_000), "1h", window=3)
    assert res_h.annualized["close_to_close"] == pytest.approx(sd * math.sqrt(8_760), rel=REL)


def test_range_estimators_closed_forms() -> None:
    # H = 2L every bar: Parkinson σ² = ln(2)² / (4 ln 2) = ln(2)/4.
    df = candles([1, 1], [2, 2], [1, 1], [1.5, 1.5])
    assert compute_volatility(df, "1m", window=2).parkinson == pytest.approx(math.sqrt(math.log(2)) / 2, rel=REL)
    # O = L, C = H, H/L = e: GK = ½·1 − (2 ln 2 − 1)·1; RS = 0 (the bar only goes up).
    e = math.e
    df = candles([1, 1], [e, e], [1, 1], [e, e])
    res = compute_volatility(df, "1m", window=2)
    assert res.garman_klass == pytest.approx(math.sqrt(1.5 - 2 * math.log(2)), rel=REL)
    assert res.rogers_satchell == 0.0
    # O = C = L, H = e·L: RS term = ln(H/C)·ln(H/O) = 1.
    df = candles([1, 1], [e, e], [1, 1], [1, 1])
    assert compute_volatility(df, "1m", window=2).rogers_satchell == pytest.approx(1.0, rel=REL)


def test_zero_range_bars_give_zero_not_nan() -> None:
    df = candles([5] * 6, [5] * 6, [5] * 6, [5] * 6)
    res = compute_volatility(df, "1m", window=4)
    for name in ("close_to_close", "parkinson", "garman_klass", "rogers_satchell", "yang_zhang"):
        assert getattr(res, name) == 0.0, name
    assert res.vol_of_vol == 0.0
    assert res.insufficient_data is False


def test_gap_is_not_a_one_bar_return() -> None:
    c = [100.0, 101.0, 102.0, 150.0, 151.0, 152.5]
    df = candles(c, c, c, c, drop=(2,))  # bar 2 missing: no return 101→150 may appear
    grid = to_grid(df, "1m")
    assert len(grid) == 6 and grid["close"].isna().sum() == 1
    strict = close_to_close(grid, 3)
    assert strict.isna().all()  # every 3-return window touches the gap
    relaxed = close_to_close(grid, 3, min_periods=2)
    r1, r2 = math.log(151 / 150), math.log(152.5 / 151)
    assert relaxed.iloc[-1] == pytest.approx(abs(r1 - r2) / math.sqrt(2), rel=REL)
    res = compute_volatility(df, "1m", window=3)
    assert res.missing_bars == 1 and res.bars == 5
    assert res.close_to_close is None and res.insufficient_data is True


def test_yang_zhang_needs_previous_close_for_first_bar() -> None:
    # 3 candles, window 3: overnight return of the first bar has no previous close.
    df = PINNED.iloc[2:].reset_index(drop=True)
    assert yang_zhang(to_grid(df, "1m"), 3).isna().all()
    assert compute_volatility(df, "1m", 3).parkinson is not None  # range estimators need only 3 bars


def test_vol_of_vol_hand_case() -> None:
    c = [100.0, 101.0, 100.0, 103.0]
    df = candles(c, c, c, c)
    r = [math.log(101 / 100), math.log(100 / 101), math.log(103 / 100)]
    v1, v2 = abs(r[0] - r[1]) / math.sqrt(2), abs(r[1] - r[2]) / math.sqrt(2)
    res = compute_volatility(df, "1m", window=2)
    assert res.close_to_close == pytest.approx(v2, rel=REL)
    assert res.vol_of_vol == pytest.approx(abs(v1 - v2) / math.sqrt(2), rel=REL)


def test_window_longer_than_data_is_explicit_and_json_safe() -> None:
    res = compute_volatility(PINNED, "1m", window=10)
    assert res.insufficient_data is True
    d = res.to_dict()
    assert d["close_to_close"] is None and d["yang_zhang"] is None and d["annualized"]["parkinson"] is None
    json.dumps(d, allow_nan=False)


def test_empty_input() -> None:
    res = compute_volatility(PINNED.iloc[:0], "1m", window=3)
    assert res.bars == 0 and res.insufficient_data is True and res.window_end is None
    json.dumps(res.to_dict(), allow_nan=False)
    assert volatility_series(PINNED.iloc[:0], "1m", 3).empty


def test_periods_per_year_and_bad_inputs() -> None:
    assert periods_per_year("1m") == 525_600
    assert periods_per_year("1h") == 8_760
    assert periods_per_year("4h") == 2_190
    assert periods_per_year("1d") == 365
    with pytest.raises(ValueError):
        periods_per_year("1M")
    with pytest.raises(ValueError):
        compute_volatility(PINNED, "1m", window=1)
    misaligned = PINNED.assign(open_time=PINNED["open_time"] + [0, 0, 5, 0, 0])
    with pytest.raises(ValueError):
        to_grid(misaligned, "1m")


def test_non_positive_price_is_treated_as_missing() -> None:
    df = PINNED.copy()
    df.loc[0, "low"] = 0.0
    res = compute_volatility(df, "1m", window=3)
    assert res.parkinson == pytest.approx(
        compute_volatility(PINNED, "1m", 3).parkinson, rel=1e-12
    )  # bar 0 not in window
    assert res.missing_bars == 1


def test_rolling_stays_exact_over_a_month_of_minutes() -> None:
    """pandas' online rolling sums must not drift: the last window equals a direct computation."""
    rng = np.random.default_rng(3)
    n, w = 43_200, 1440
    c = 30_000 * np.exp(np.cumsum(rng.normal(0, 8e-4, n)))
    o = np.concatenate([[30_000.0], c[:-1]]) * np.exp(rng.normal(0, 1e-5, n))
    s = np.abs(rng.normal(0, 4e-4, n))
    h, lo = np.maximum(o, c) * (1 + s), np.minimum(o, c) * (1 - s)
    res = compute_volatility(candles(o, h, lo, c), "1m", window=w)
    hl, co = np.log(h / lo)[-w:], np.log(c / o)[-w:]
    rs = (np.log(h / c) * np.log(h / o) + np.log(lo / c) * np.log(lo / o))[-w:]
    on = np.log(o[1:] / c[:-1])[-w:]
    k = 0.34 / (1.34 + (w + 1) / (w - 1))
    assert res.close_to_close == pytest.approx(np.diff(np.log(c))[-w:].std(ddof=1), rel=REL)
    assert res.parkinson == pytest.approx(math.sqrt((hl**2).mean() / (4 * math.log(2))), rel=REL)
    assert res.garman_klass == pytest.approx(math.sqrt((0.5 * hl**2 - (2 * math.log(2) - 1) * co**2).mean()), rel=REL)
    assert res.rogers_satchell == pytest.approx(math.sqrt(rs.mean()), rel=REL)
    assert res.yang_zhang == pytest.approx(
        math.sqrt(on.var(ddof=1) + k * co.var(ddof=1) + (1 - k) * rs.mean()), rel=REL
    )
