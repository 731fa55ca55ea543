"""Health score arithmetic against hand-computed numbers."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd

from dm_assets.candles import health
from dm_assets.candles.compute import DAY_MS, MINUTE_MS

DAY = int(dt.datetime(2024, 3, 10, tzinfo=dt.UTC).timestamp() * 1000)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_expected_buckets() -> None:
    assert health.expected_buckets(DAY, DAY + 5 * DAY_MS) == 1440
    assert health.expected_buckets(DAY, DAY + 90 * MINUTE_MS + 59_999) == 90  # minute 90 still open
    assert health.expected_buckets(DAY, DAY - 1) == 0
    assert health.expected_buckets(DAY, DAY + 5 * DAY_MS, 4 * 3_600_000) == 6


def test_components() -> None:
    assert health.completeness(1080, 1440) == 0.75
    assert health.completeness(0, 0) == 1.0
    assert health.completeness(1500, 1440) == 1.0
    # lag 31 intervals → (60 − 31) / 58 = 0.5
    assert close(health.freshness(DAY - 1, DAY + 31 * MINUTE_MS, MINUTE_MS), 0.5)
    assert health.freshness(DAY - 1, DAY + 2 * MINUTE_MS, MINUTE_MS) == 1.0
    assert health.freshness(DAY - 1, DAY + 60 * MINUTE_MS, MINUTE_MS) == 0.0
    assert health.freshness(None, DAY, MINUTE_MS) == 0.0
    # past day: now clipped to the day end; complete → lag 0; last 3 h missing → stale.
    end = DAY + DAY_MS
    assert health.freshness(end - 1, end + 10 * DAY_MS, MINUTE_MS, day_end_ms=end) == 1.0
    assert health.freshness(end - 180 * MINUTE_MS - 1, end + DAY_MS, MINUTE_MS, day_end_ms=end) == 0.0
    # day just started, no candle due yet: measured from the day start.
    assert health.freshness(None, DAY + 30_000, MINUTE_MS, day_start_ms=DAY, day_end_ms=end) == 1.0
    assert close(health.consistency(1080, 20, 34), 0.95)
    assert health.consistency(0, 0, 0) == 1.0
    assert health.consistency(10, 8, 8) == 0.0


def test_score_weighted_mean_rounded() -> None:
    s = health.health_score(0.75, 0.5, 0.95)
    # 100 × (0.5·0.75 + 0.2·0.5 + 0.3·0.95) = 37.5 + 10 + 28.5
    assert s.score == 76.0
    assert health.health_score(1 / 3, 1.0, 1.0).score == 66.66  # 16.666… + 20 + 30, floored
    assert health.health_score(1.0, 1.0, 0.99999).score == 99.99  # anything wrong scores below 100
    assert health.health_score(1.0, 1.0, 1.0).score == 100.0
    assert health.health_score(0.0, 0.0, 0.0).score == 0.0


def _day(open_times: np.ndarray) -> pd.DataFrame:
    n = len(open_times)
    return pd.DataFrame(
        {
            "open_time": open_times,
            "close_time": open_times + MINUTE_MS - 1,
            "open": np.full(n, 10.0),
            "high": np.full(n, 11.0),
            "low": np.full(n, 9.0),
            "close": np.full(n, 10.0),
            "volume": np.ones(n),
            "quote_volume": np.full(n, 10.0),
            "taker_buy_volume": np.full(n, 0.5),
            "taker_buy_quote_volume": np.full(n, 5.0),
            "trades": np.ones(n, dtype=np.int64),
        }
    )


def test_day_health_from_candles() -> None:
    # Today at 10:00:30 (600 minutes due), 540 present (60 missing), the last one 09:29 → lag 30.5 intervals,
    # 27 of them broken (high below low).
    ot = DAY + np.r_[np.arange(0, 30), np.arange(60, 570)] * MINUTE_MS
    df = _day(ot)
    df.loc[:26, "high"] = 1.0
    now = DAY + 600 * MINUTE_MS + 30_000
    s = health.day_health(df, DAY, now)
    assert close(s.completeness, 540 / 600)
    assert close(s.freshness, (60 - 30.5) / 58)
    # 27 impossible rows, each costing the ohlc_sane weight of 10 rows
    assert close(s.consistency, 1 - 10 * 27 / 540)
    want = math.floor(100 * 100 * (0.5 * 0.9 + 0.2 * (29.5 / 58) + 0.3 * 0.5)) / 100
    assert s.score == want
    assert s.details["failed_checks"]["ohlc_sane"]["count"] == 27
    full = health.day_health(_day(DAY + np.arange(1440) * MINUTE_MS), DAY, DAY + 3 * DAY_MS)
    assert (full.completeness, full.freshness, full.consistency, full.score) == (1.0, 1.0, 1.0, 100.0)
    empty = health.day_health(_day(np.empty(0, dtype=np.int64)), DAY, DAY + 3 * DAY_MS)
    assert (empty.completeness, empty.freshness, empty.score) == (0.0, 0.0, 30.0)


def test_consistency_from_check_outcomes_bad_print_and_kept() -> None:
    from dm_assets.candles import checks

    df = _day(DAY + np.arange(1440) * MINUTE_MS)
    rng = np.random.default_rng(3)
    px = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, 1440)))
    df["open"] = np.r_[100.0, px[:-1]]
    df["close"] = px
    df["high"] = np.maximum(df["open"], df["close"]) * 1.0003
    df["low"] = np.minimum(df["open"], df["close"]) * 0.9997
    df["flags"] = [[] for _ in range(1440)]
    clean = health.day_health(df, DAY, DAY + 3 * DAY_MS)
    assert clean.score == 100.0 and clean.details["failed_checks"] == {}
    for c in ("open", "high", "low", "close"):
        df.loc[700, c] *= 2.4
    bad = health.day_health(df, DAY, DAY + 3 * DAY_MS)
    assert close(bad.consistency, 1 - 10 / 1440) and bad.score < 100
    assert bad.details["failed_checks"]["no_bad_prints"]["severity"] == "ERROR"
    df.at[700, "flags"] = ["bad_print", "verified"]
    kept = health.day_health(df, DAY, DAY + 3 * DAY_MS)
    assert close(kept.consistency, 1 - 5 / 1440) and bad.score < kept.score < 100
    results = [checks.no_bad_prints(df, MINUTE_MS)]
    assert health.consistency_from_checks(1440, results)[0] == kept.consistency
