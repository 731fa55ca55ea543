"""The bad-print detector on generated days: no false positives on real moves, every injected fault found.

Property-style over a handful of generated days (kept small: the full measurement is
``bench/bench_integrity.py``, whose numbers are in the README).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from dm_assets.candles import integrity
from dm_assets.candles.faults import FAULT_KINDS, inject, random_factor
from dm_assets.candles.integrity import Thresholds, detect_bad_prints, reconcile, thresholds_for
from ingest_service.pricepath import GENESIS_MS, Market, realistic_day

M = 60_000


def frame(d: dict[str, np.ndarray]) -> pd.DataFrame:
    n = len(d["open"])
    return pd.DataFrame(
        {"open_time": np.arange(n, dtype=np.int64) * M, **{k: np.array(v, float) for k, v in d.items()}}
    )


DAYS = [
    ("busy", dict(daily_vol=0.08)),
    ("flash crash −10 % over 3 min, recovered over 8", dict(daily_vol=0.08, crash=0.10)),
    ("crash −25 % recovered over 12 min", dict(daily_vol=0.08, crash=0.25, recovery_minutes=12)),
    (
        "extreme: vol 20 %, t(2.5), −30 % in 2 min",
        dict(daily_vol=0.20, tail_df=2.5, crash=0.30, crash_minutes=2, recovery_minutes=4),
    ),
]


@pytest.mark.parametrize(("name", "kw"), DAYS, ids=[d[0] for d in DAYS])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_false_positives_on_realistic_days(name: str, kw: dict, seed: int) -> None:
    df = frame(realistic_day(seed, **kw))
    found = detect_bad_prints(df, M)
    assert not found.flagged.any(), (name, np.flatnonzero(found.flagged))


def test_a_real_crash_is_a_large_move_yet_not_flagged() -> None:
    d = realistic_day(4, daily_vol=0.08, crash=0.25)
    lc = np.log(d["close"])
    assert np.min(lc[1:] - lc[:-1]) < -0.05  # the crash minutes really move > 5 % each
    assert not detect_bad_prints(frame(d), M).flagged.any()


def test_no_false_positives_on_the_simulated_exchange() -> None:
    market = Market()
    for symbol, day in (("BTCUSDT", 2100), ("ETHUSDT", 2101), ("SOLUSDT", 2102)):
        _, cols = market.minutes(symbol, GENESIS_MS + day * 86_400_000, GENESIS_MS + (day + 1) * 86_400_000)
        df = frame({c: cols[c] / 100.0 for c in ("open", "high", "low", "close")})
        assert not detect_bad_prints(df, M).flagged.any(), symbol


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_injected_fault_kind_is_found_and_nothing_else(kind: str) -> None:
    rng = np.random.default_rng(11)
    for seed in range(4):
        df = frame(realistic_day(100 + seed, daily_vol=0.08, crash=0.10 if seed % 2 else 0.0))
        i = int(rng.integers(30, 1400))
        rows = inject(df, kind, i, random_factor(kind, rng, lo=np.log(1.1)))
        found = detect_bad_prints(df, M)
        assert found.flagged[rows].any(), (kind, seed)
        assert set(np.flatnonzero(found.flagged)) <= set(rows), (kind, seed)


def test_the_issue_scenarios_rest_row_at_2_4x_and_kline_high_at_1_8x() -> None:
    df = frame(realistic_day(9, daily_vol=0.03))
    inject(df, "whole_candle", 400, 2.4)
    inject(df, "wick_high", 900, 1.8)
    found = detect_bad_prints(df, M)
    assert np.flatnonzero(found.flagged).tolist() == [400, 900]
    assert found.excursion[400] and found.wick[900] and found.score[400] > 1


def test_thresholds_per_symbol_and_unknown_keys() -> None:
    overrides = {"*": {"jump_z": 15}, "DOGEUSDT": {"min_move": 0.02, "max_excursion_minutes": 3}}
    assert thresholds_for("BTCUSDT", overrides) == Thresholds(jump_z=15)
    doge = thresholds_for("DOGEUSDT", overrides)
    assert (doge.jump_z, doge.min_move, doge.max_excursion_minutes) == (15, 0.02, 3)
    assert isinstance(doge.max_excursion_minutes, int)
    with pytest.raises(ValueError, match="unknown keys"):
        thresholds_for("X", {"X": {"zz": 1}})
    # A symbol whose thresholds ignore 3 % moves: a 3 % bad print passes there, not elsewhere.
    df = frame(realistic_day(5, daily_vol=0.02))
    inject(df, "whole_candle", 700, 1.03)
    assert detect_bad_prints(df, M).flagged[700]
    assert not detect_bad_prints(df, M, Thresholds(min_move=0.05)).flagged[700]


def test_reconcile_names_both_sources_and_values_within_tolerance() -> None:
    a = frame(realistic_day(6, n=30))
    a["volume"] = 10.0
    b = a.copy()
    b.loc[5, "close"] *= 1 + 1e-7  # inside the 1e-6 price tolerance
    b.loc[9, "high"] *= 1.001  # outside
    b.loc[12, "volume"] = 11.0
    found = reconcile(a, b, ("kline", "agg_trades"))
    assert [d.open_time for d in found] == [9 * M, 12 * M]
    d = found[0].as_dict()
    assert d["sources"] == ["kline", "agg_trades"] and set(d["values"]) == {"high"}
    assert d["values"]["high"]["agg_trades"] == pytest.approx(d["values"]["high"]["kline"] * 1.001)
    assert reconcile(a, b, ("kline", "rest"), compare_volumes=False)[0].open_time == 9 * M
    assert integrity.ohlc_impossible(a.assign(low=a["high"] * 2)).all()


def test_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from dm_resources.settings import load_settings

    monkeypatch.setenv("DM_QUALITY_THRESHOLDS", '{"*": {"jump_z": 14}, "DOGEUSDT": {"min_move": 0.01}}')
    overrides = load_settings().quality_thresholds
    assert thresholds_for("DOGEUSDT", overrides) == Thresholds(jump_z=14, min_move=0.01)
    assert thresholds_for("BTCUSDT", overrides) == Thresholds(jump_z=14)


def test_rolling_median_by_sort_equals_nanmedian() -> None:
    """The short-row median (one sort, NaN last) gives numpy's nanmedian exactly, all-NaN rows included."""
    rng = np.random.default_rng(7)
    for n in (1, 6, 24, 96, 288):
        for trial in range(20):
            v = rng.normal(size=n)
            v[rng.random(n) < 0.3] = np.nan
            if trial == 0:
                v[:] = np.nan
            wins = np.lib.stride_tricks.sliding_window_view(
                np.concatenate([np.full(30, np.nan), v, np.full(30, np.nan)]), 61
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
                expected = np.nanmedian(wins, axis=1)
            got = integrity._nanmedian_rows(wins, np.isfinite(wins).sum(axis=1))
            assert np.array_equal(got, expected, equal_nan=True)


def _days_with_faults(step_minutes: int) -> list[pd.DataFrame]:
    """Consecutive days of one symbol at an interval: faults, a hole, a bad row, short and empty days."""
    from dm_assets.candles import compute

    out = []
    for seed in range(8):
        df = frame(realistic_day(200 + seed, daily_vol=0.08, crash=0.10 if seed % 3 == 0 else 0.0))
        df["open_time"] += seed * 86_400_000
        if seed % 2:
            inject(df, FAULT_KINDS[seed % len(FAULT_KINDS)], 300 + 97 * seed, 2.4 if seed % 4 == 1 else 0.4)
        if step_minutes > 1:
            df = df.assign(volume=1.0, quote_volume=1.0, trades=1, taker_buy_volume=0.5, taker_buy_quote_volume=0.5)
            df = compute.resample(df, f"{step_minutes}m" if step_minutes < 60 else f"{step_minutes // 60}h").candles
        df = df.reset_index(drop=True)
        if seed == 2:
            a = len(df) // 6
            df = df.drop(index=range(a, a + max(2, len(df) // 20))).reset_index(drop=True)  # a hole
        if seed == 5:
            df.loc[len(df) // 3, "low"] = np.nan  # an unusable row
        out.append(df)
    out.insert(3, out[0].iloc[:10].assign(open_time=out[0]["open_time"].iloc[:10] + 3 * 86_400_000 * 9))  # too short
    out.insert(4, out[0].iloc[:0])  # empty
    return out


@pytest.mark.parametrize("step_minutes", [1, 5, 15, 60])
def test_many_days_in_one_pass_equal_each_day_alone(step_minutes: int) -> None:
    """One pass over a chunk's days finds exactly what a pass per day finds: flags, scores, σ."""
    days = _days_with_faults(step_minutes)
    many = integrity.detect_bad_prints_many(days, step_minutes * M)
    assert len(many) == len(days)
    flagged = 0
    for df, got in zip(days, many, strict=True):
        alone = detect_bad_prints(df, step_minutes * M)
        assert np.array_equal(got.open_time, alone.open_time)
        assert np.array_equal(got.excursion, alone.excursion) and np.array_equal(got.wick, alone.wick)
        assert np.allclose(got.score, alone.score, rtol=0, atol=1e-12)
        assert np.allclose(got.sigma, alone.sigma, rtol=0, atol=1e-15, equal_nan=True)
        flagged += int(alone.flagged.sum())
    assert flagged > 0  # the faults are there to be found, in both
