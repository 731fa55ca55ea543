"""Candle checks: each passes on good candles only, and fails (with its severity) on injected bad ones."""

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
        checks.no_gaps(df["open_time"].to_numpy(), MINUTE_MS, DAY, DAY + DAY_MS),
        checks.no_duplicates(df),
        checks.ohlc_sane(df, interval_ms=MINUTE_MS),
        checks.no_bad_prints(df, MINUTE_MS),
        checks.sources_agree(df),
        checks.archive_files_accepted([], 1),
    ]
    assert [r.name for r in results] == list(checks.CHECKS)
    for r in results:
        assert r.severity == "OK" and r.passed and r.count == 0 and r.samples == (), r
    assert results[0].checked == 1440


def test_gaps_severity_confirmed_and_open_minute() -> None:
    ot = good_day()["open_time"].to_numpy()
    few = np.delete(ot, [10, 11, 500])
    r = checks.no_gaps(few, MINUTE_MS, DAY, DAY + DAY_MS)
    assert (r.severity, r.count, r.passed) == ("WARN", 3, False)  # found something: fails, WARN says how bad
    assert r.samples == (M(10), M(11), M(500))
    assert r.details["ranges"] == 2 and r.details["first_ranges"] == [
        "2024-03-10T00:10–2024-03-10T00:12",
        "2024-03-10T08:20–2024-03-10T08:21",
    ]
    many = ot[ot < M(1300)]
    r = checks.no_gaps(many, MINUTE_MS, DAY, DAY + DAY_MS)
    assert (r.severity, r.count, r.passed) == ("ERROR", 140, False)
    assert len(r.samples) == checks.MAX_SAMPLES and r.details["longest_range"] == 140
    r = checks.no_gaps(few, MINUTE_MS, DAY, DAY + DAY_MS, confirmed_missing=[M(10), M(11), M(500)])
    assert (r.severity, r.count, r.details["confirmed_missing"]) == ("OK", 0, 3)
    # Today at 00:20:30: 20 minutes are due, minute 20 is still open.
    r = checks.no_gaps(ot[:15], MINUTE_MS, DAY, DAY + DAY_MS, now_ms=M(20) + 30_000)
    assert (r.checked, r.count, r.samples) == (20, 5, (M(15), M(16), M(17), M(18), M(19)))


def test_duplicates_identical_warn_conflicting_error() -> None:
    df = good_day(50)
    same = pd.concat([df, df.iloc[[3, 3]]], ignore_index=True)
    r = checks.no_duplicates(same)
    assert (r.severity, r.count, r.samples, r.passed) == ("WARN", 2, (M(3),), False)
    assert r.details == {"duplicated_keys": 1, "conflicting_keys": 0}
    assert [row["open_time"] for row in r.rows] == [M(3)] * 3
    other = df.iloc[[7]].assign(close=df["close"].iloc[7] * 1.01)
    r = checks.no_duplicates(pd.concat([df, other], ignore_index=True))
    assert (r.severity, r.count, r.passed, r.samples) == ("ERROR", 1, False, (M(7),))
    assert r.details["conflicting_keys"] == 1
    # Same open time in two symbols is not a duplicate.
    assert checks.no_duplicates(pd.concat([df, df.assign(symbol="ETHUSDT")])).count == 0


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
    r = checks.ohlc_sane(df, interval_ms=MINUTE_MS)
    assert (r.severity, r.count, r.passed, r.samples) == ("ERROR", 1, False, (M(42),))
    assert r.details[rule] == 1


def test_ohlc_tolerates_float_sum_rounding_of_taker_volume() -> None:
    df = good_day(10)
    df["taker_buy_volume"] = df["volume"] * (1 + 1e-15)
    assert checks.ohlc_sane(df).count == 0


def test_ohlc_kept_after_rest_verification_is_warn() -> None:
    df = good_day(100)
    df["flags"] = [[] for _ in range(100)]
    df.loc[42, "low"] = 1e9
    assert checks.ohlc_sane(df).severity == "ERROR"
    df.at[42, "flags"] = ["ohlc_impossible", "verified"]
    r = checks.ohlc_sane(df)
    assert (r.severity, r.passed, r.details["verified_kept"]) == ("WARN", False, 1)


def test_bad_print_whole_candle_is_error_with_first_rows() -> None:
    df = good_day(1440)
    for c in ("open", "high", "low", "close"):
        df.loc[700, c] *= 2.4
    r = checks.no_bad_prints(df, MINUTE_MS)
    assert (r.severity, r.passed, r.count, r.samples) == ("ERROR", False, 1, (M(700),))
    assert r.rows[0]["open_time"] == M(700) and r.rows[0]["time"] == "2024-03-10T11:40"
    assert r.details["excursions"] == 1 and {"no_bad_prints"} <= checks.BLOCKING


def test_bad_print_wick_and_kept_is_warn() -> None:
    df = good_day(1440)
    df["flags"] = [[] for _ in range(1440)]
    df.loc[300, "high"] = df.loc[300, "close"] * 1.8
    r = checks.no_bad_prints(df, MINUTE_MS)
    assert (r.severity, r.samples, r.details["wicks"]) == ("ERROR", (M(300),), 1)
    df.at[300, "flags"] = ["bad_print", "verified"]
    assert checks.no_bad_prints(df, MINUTE_MS).severity == "WARN"


def test_bad_print_flat_series_and_short_series() -> None:
    df = good_day(100)
    for c in ("open", "high", "low", "close"):
        df[c] = 50.0
    assert checks.no_bad_prints(df, MINUTE_MS).passed  # nothing moves: nothing flagged
    df.loc[60, ["open", "high", "low", "close"]] = 50.1  # 0.2 %: under min_move, never a bad print
    assert checks.no_bad_prints(df, MINUTE_MS).passed
    df.loc[60, ["open", "high", "low", "close"]] = 60.0  # +20 % for one minute and back
    r = checks.no_bad_prints(df, MINUTE_MS)
    assert r.count == 1 and r.samples == (M(60),)
    short = checks.no_bad_prints(good_day(10), MINUTE_MS)
    assert short.passed and short.details["insufficient"] is True


def test_flag_carried_from_1m_fails_higher_interval() -> None:
    df = good_day(24).assign(open_time=DAY + np.arange(24) * 3_600_000)
    df["flags"] = [[] for _ in range(24)]
    df.at[5, "flags"] = ["bad_print", "verified"]
    r = checks.no_bad_prints(df, 3_600_000)
    assert (r.severity, r.samples, r.details["carried_from_1m"]) == ("WARN", (DAY + 5 * 3_600_000,), 1)


def test_sources_agree_reads_disagreement_flags() -> None:
    df = good_day(50)
    df["flags"] = [[] for _ in range(50)]
    assert checks.sources_agree(df).passed
    df.at[7, "flags"] = ["source_disagreement"]
    r = checks.sources_agree(df, [{"open_time": M(7), "sources": ["kline", "agg_trades"]}])
    assert (r.severity, r.count, r.samples) == ("ERROR", 1, (M(7),))
    assert r.details["compared"][0]["sources"] == ["kline", "agg_trades"]


def test_check_result_severity_must_match_count() -> None:
    with pytest.raises(ValueError):
        checks.CheckResult("no_gaps", "OK", 3, 10)
    with pytest.raises(ValueError):
        checks.CheckResult("no_gaps", "WARN", 0, 10)


def test_a_refused_archive_file_fails_its_check_naming_the_file_and_the_reason() -> None:
    r = checks.archive_files_accepted([{"file": "BTCUSDT-1m-2026-01.zip", "reason": "checksum mismatch"}], 2)
    assert (r.passed, r.severity, r.count, r.blocking) == (False, "WARN", 1, False)
    assert r.details["refused"] == [{"file": "BTCUSDT-1m-2026-01.zip", "reason": "checksum mismatch"}]
    from dm_assets.candles import audit

    assert "BTCUSDT-1m-2026-01.zip: checksum mismatch" in audit.message(r)
    assert checks.archive_files_accepted([], 2).passed


def test_the_small_window_rolling_statistics_equal_pandas_rolling() -> None:
    """The numpy path of ``integrity._rolling`` (days of 5m, 15m, 1h candles) is pandas' rule exactly."""
    from dm_assets.candles import integrity

    rng = np.random.default_rng(1)
    for n in (1, 5, 14, 15, 24, 96, 288, 500):
        v = rng.normal(size=n)
        v[rng.random(n) < 0.2] = np.nan
        for how in ("median", "max"):
            r = pd.Series(v).rolling(61, center=True, min_periods=15)
            want = (r.median() if how == "median" else r.max()).to_numpy()
            fallback = float(np.nanmedian(v)) if np.isfinite(v).any() else 0.0
            want = np.where(np.isfinite(want), want, fallback)
            assert np.allclose(integrity._rolling(v, 61, how), want, equal_nan=True), (n, how)


def test_duplicates_are_found_past_the_ascending_fast_path() -> None:
    df = good_day().head(10)
    assert checks.no_duplicates(df).passed
    twice = pd.concat([df, df.iloc[[3]]], ignore_index=True)
    assert checks.no_duplicates(twice).count == 1
    unsorted = df.iloc[::-1].reset_index(drop=True)
    assert checks.no_duplicates(unsorted).passed
