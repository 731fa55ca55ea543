"""Audit checks: each passes on good candles and catches injected bad ones."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from dm_assets.candles import checks
from dm_assets.candles.compute import DAY_MS, MINUTE_MS

DAY = int(dt.datetime(2024, 3, 10, tzinfo=dt.UTC).timestamp() * 1000)


def M(i: int) -> int:
    return DAY + i * MINUTE_MS


def good_day(n: int = 1440, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.r_[100.0, close[:-1]]
    vol = rng.uniform(0.1, 10, n)
    ot = DAY + np.arange(n, dtype=np.int64) * MINUTE_MS
    return pd.DataFrame(
        {
            "symbol": "BTCUSDT",
            "interval": "1m",
            "open_time": ot,
            "close_time": ot + MINUTE_MS - 1,
            "open": open_,
            "high": np.maximum(open_, close) * 1.0005,
            "low": np.minimum(open_, close) * 0.9995,
            "close": close,
            "volume": vol,
            "quote_volume": vol * close,
            "taker_buy_volume": vol * 0.4,
            "taker_buy_quote_volume": vol * close * 0.4,
            "trades": rng.integers(1, 100, n),
        }
    )


def test_good_day_passes_every_check() -> None:
    df = good_day()
    results = [
        checks.find_gaps(df["open_time"].to_numpy(), MINUTE_MS, DAY, DAY + DAY_MS),
        checks.find_duplicates(df),
        checks.ohlc_violations(df, interval_ms=MINUTE_MS),
        checks.outlier_jumps(df),
    ]
    for r in results:
        assert r.severity == "OK" and r.passed and r.count == 0 and r.samples == (), r
    assert results[0].checked == 1440


def test_gaps_severity_confirmed_and_open_minute() -> None:
    ot = good_day()["open_time"].to_numpy()
    few = np.delete(ot, [10, 11, 500])
    r = checks.find_gaps(few, MINUTE_MS, DAY, DAY + DAY_MS)
    assert (r.severity, r.count, r.passed) == ("WARN", 3, True)
    assert r.samples == (M(10), M(11), M(500))
    assert r.details["ranges"] == 2 and r.details["range_samples"] == [[M(10), M(12)], [M(500), M(501)]]
    many = ot[ot < M(1300)]
    r = checks.find_gaps(many, MINUTE_MS, DAY, DAY + DAY_MS)
    assert (r.severity, r.count, r.passed) == ("ERROR", 140, False)
    assert len(r.samples) == checks.MAX_SAMPLES and r.details["longest_range"] == 140
    r = checks.find_gaps(few, MINUTE_MS, DAY, DAY + DAY_MS, confirmed_missing=[M(10), M(11), M(500)])
    assert (r.severity, r.count, r.details["confirmed_missing"]) == ("OK", 0, 3)
    # Today at 00:20:30: 20 minutes are due, minute 20 is still open.
    r = checks.find_gaps(ot[:15], MINUTE_MS, DAY, DAY + DAY_MS, now_ms=M(20) + 30_000)
    assert (r.checked, r.count, r.samples) == (20, 5, (M(15), M(16), M(17), M(18), M(19)))


def test_duplicates_identical_warn_conflicting_error() -> None:
    df = good_day(50)
    same = pd.concat([df, df.iloc[[3, 3]]], ignore_index=True)
    r = checks.find_duplicates(same)
    assert (r.severity, r.count, r.samples) == ("WARN", 2, (M(3),))
    assert r.details == {"duplicated_keys": 1, "conflicting_keys": 0}
    other = df.iloc[[7]].assign(close=df["close"].iloc[7] * 1.01)
    r = checks.find_duplicates(pd.concat([df, other], ignore_index=True))
    assert (r.severity, r.count, r.passed, r.samples) == ("ERROR", 1, False, (M(7),))
    assert r.details["conflicting_keys"] == 1
    # Same open time in two symbols is not a duplicate.
    assert checks.find_duplicates(pd.concat([df, df.assign(symbol="ETHUSDT")])).count == 0


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("low", 1e9, "low_above_high"),
        ("open", 1e9, "open_outside_range"),
        ("close", 1e-9, "close_outside_range"),
        ("volume", -1.0, "negative_volume"),
        ("quote_volume", -1.0, "negative_quote_volume"),
        ("taker_buy_volume", 1e9, "taker_buy_volume_above_volume"),
        ("high", float("nan"), "non_finite"),
        ("close_time", 0, "wrong_close_time"),
    ],
)
def test_ohlc_catches_each_injected_violation(column: str, value: float, rule: str) -> None:
    df = good_day(100)
    df.loc[42, column] = value
    r = checks.ohlc_violations(df, interval_ms=MINUTE_MS)
    assert (r.severity, r.count, r.passed, r.samples) == ("ERROR", 1, False, (M(42),))
    assert r.details[rule] == 1


def test_ohlc_tolerates_float_sum_rounding_of_taker_volume() -> None:
    df = good_day(10)
    df["taker_buy_volume"] = df["volume"] * (1 + 1e-15)
    assert checks.ohlc_violations(df).count == 0


def test_outlier_jumps_flags_bad_tick() -> None:
    df = good_day(1440)
    df.loc[700, "close"] *= 1.05  # ~50 robust sigmas for 1e-3 returns: out and back
    r = checks.outlier_jumps(df, z=8.0)
    assert r.severity == "WARN" and r.passed
    assert r.samples == (M(700), M(701)) and r.count == 2
    assert r.details["max_abs_z"] > 8


def test_outlier_jumps_flat_and_short_series() -> None:
    df = good_day(100)
    df["close"] = 50.0
    assert checks.outlier_jumps(df).count == 0
    df.loc[60, "close"] = 51.0  # MAD is 0: mean-deviation fallback still sees the jump
    r = checks.outlier_jumps(df)
    assert r.count == 2 and r.samples == (M(60), M(61))
    short = checks.outlier_jumps(good_day(10))
    assert short.severity == "OK" and short.details["insufficient"] is True
