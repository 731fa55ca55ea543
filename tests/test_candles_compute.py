"""Candle computation: converters, trades → 1m, completeness proof, source precedence, resampling.

Expected values come from hand-made inputs or from an independent plain-Python loop.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from bson.decimal128 import Decimal128

from dm_assets.candles import build, compute
from dm_assets.candles.compute import MINUTE_MS

REL = 1e-9
DAY = int(dt.datetime(2024, 3, 10, tzinfo=dt.UTC).timestamp() * 1000)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


# --------------------------------------------------------------------------- converters


def test_decimals_to_float_matches_float_of_string() -> None:
    rng = random.Random(7)
    strings = [
        "0",
        "-0",
        "0.00012345",
        "27000.10",
        "1E+5",
        "-3.5E-7",
        "123456789012345678901234567890.1234",
        "9007199254740993",
        "1E-30",
        "NaN",
        "Infinity",
        "-Infinity",
        "0.1",
        "1e22",
        "1e23",
    ]
    for _ in range(2000):
        digits = rng.randint(1, 15)
        coef = rng.randint(0, 10**digits - 1)
        exp = rng.randint(-12, 4)
        strings.append(f"{'-' if rng.random() < 0.2 else ''}{coef}E{exp}")
    values = [Decimal128(s) for s in strings]
    got = compute.decimals_to_float(values)
    want = np.array([float(str(v)) for v in values])
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))


def test_decimals_to_float_mixed_types() -> None:
    got = compute.decimals_to_float([Decimal128("1.5"), "2.25", Decimal("3.125"), 4, None])
    assert got[:4].tolist() == [1.5, 2.25, 3.125, 4.0]
    assert math.isnan(got[4])


def _trade_doc(agg_id: int, t: int, price: str, qty: str, maker: bool, first: int, last: int) -> dict:
    return {
        "_id": f"BTCUSDT:{agg_id}",
        "symbol": "BTCUSDT",
        "agg_id": agg_id,
        "trade_time": t,
        "event_time": t + 3,
        "price": Decimal128(price),
        "qty": Decimal128(qty),
        "buyer_is_maker": maker,
        "first_trade_id": first,
        "last_trade_id": last,
    }


def test_agg_trades_frame_and_trade_count_from_ids() -> None:
    docs = [
        _trade_doc(10, DAY + 1_000, "100.5", "0.010", False, 100, 102),
        _trade_doc(11, DAY + 2_000, "100.7", "0.020", True, 103, 103),
    ]
    frame = compute.agg_trades_frame(docs)
    assert frame["price"].tolist() == [100.5, 100.7]
    assert frame["qty"].tolist() == [0.01, 0.02]
    assert frame["buyer_is_maker"].tolist() == [False, True]
    candles = compute.trades_to_1m(frame)
    assert candles["trades"].tolist() == [4]  # raw trades 100..103, not 2 aggregated ones
    assert compute.agg_trades_frame([]).empty


def _kline_doc(open_time: int, source: str) -> dict:
    o, h, lo, c = "10", "12", "9", "11"
    return {
        "_id": f"BTCUSDT:1m:{open_time}",
        "symbol": "BTCUSDT",
        "interval": "1m",
        "open_time": open_time,
        "close_time": open_time + MINUTE_MS - 1,
        "open": Decimal128(o),
        "high": Decimal128(h),
        "low": Decimal128(lo),
        "close": Decimal128(c),
        "volume": Decimal128("5"),
        "quote_volume": Decimal128("52.5"),
        "trades": 7,
        "taker_buy_volume": Decimal128("2"),
        "taker_buy_quote_volume": Decimal128("21"),
        "event_time": open_time + MINUTE_MS,
        "source": source,
    }


def test_klines_frame_maps_sources() -> None:
    frame = compute.klines_frame([_kline_doc(DAY, "ws"), _kline_doc(DAY + MINUTE_MS, "rest")])
    assert frame["source"].tolist() == ["kline", "rest"]
    assert frame["quote_volume"].tolist() == [52.5, 52.5]
    assert frame["trades"].dtype == np.int64
    assert frame["close_time"].tolist() == [DAY + MINUTE_MS - 1, DAY + 2 * MINUTE_MS - 1]


def test_candles_documents_round_trip() -> None:
    frame = compute.klines_frame([_kline_doc(DAY, "ws"), _kline_doc(DAY + MINUTE_MS, "rest")])
    frame.loc[0, "close_time"] = 0  # never trusted: recomputed from open_time
    docs = compute.candles_to_documents(frame, "BTCUSDT", "1m")
    assert [d["_id"] for d in docs] == [f"BTCUSDT:1m:{DAY}", f"BTCUSDT:1m:{DAY + MINUTE_MS}"]
    assert docs[0]["close_time"] == DAY + MINUTE_MS - 1
    assert docs[1]["source"] == "rest"
    for doc in docs:  # plain Python types only: BSON cannot encode numpy scalars
        assert {type(v) for k, v in doc.items() if k != "flags"} <= {str, int, float}
        assert doc["flags"] == []
    flagged = compute.candles_to_documents(frame.assign(flags=[["bad_print", "verified", "bad_print"], []]), "X", "1m")
    assert [d["flags"] for d in flagged] == [["bad_print", "verified"], []]
    back = compute.candles_frame(flagged)
    assert back["flags"].tolist() == [["bad_print", "verified"], []]
    back = compute.candles_frame(docs)
    assert back["open"].tolist() == [10.0, 10.0]
    assert back["close_time"].tolist() == [DAY + MINUTE_MS - 1, DAY + 2 * MINUTE_MS - 1]
    with pytest.raises(ValueError):
        compute.candles_to_documents(frame.assign(open_time=frame["open_time"] + 1), "BTCUSDT", "1m")


# --------------------------------------------------------------------------- trades → 1m


def _trades(rows: list[tuple[int, int, float, float, bool]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["agg_id", "trade_time", "price", "qty", "buyer_is_maker"])


def test_trades_to_1m_hand_made_edges_and_taker_side() -> None:
    rows = [
        (4, DAY + 60_000, 101.0, 3.0, True),  # exactly open + 60 000 → next minute
        (2, DAY + 30_000, 105.0, 2.0, True),  # buyer is maker → taker sold
        (3, DAY + 59_999, 95.0, 1.0, False),  # last ms of minute 0
        (1, DAY + 0, 100.0, 1.0, False),  # taker bought
    ]
    out = compute.trades_to_1m(_trades(rows))  # unsorted on purpose
    assert out["open_time"].tolist() == [DAY, DAY + MINUTE_MS]
    assert out["close_time"].tolist() == [DAY + MINUTE_MS - 1, DAY + 2 * MINUTE_MS - 1]
    m0, m1 = out.iloc[0], out.iloc[1]
    assert (m0["open"], m0["high"], m0["low"], m0["close"]) == (100.0, 105.0, 95.0, 95.0)
    assert close(m0["volume"], 4.0) and close(m0["quote_volume"], 100 + 210 + 95)
    assert close(m0["taker_buy_volume"], 2.0) and close(m0["taker_buy_quote_volume"], 195.0)
    assert m0["trades"] == 3
    assert (m1["open"], m1["close"], m1["volume"]) == (101.0, 101.0, 3.0)
    assert (m1["taker_buy_volume"], m1["trades"]) == (0.0, 1)


def test_trades_to_1m_ties_broken_by_agg_id_and_duplicates_dropped() -> None:
    rows = [
        (8, DAY + 5_000, 11.0, 1.0, False),
        (7, DAY + 5_000, 10.0, 1.0, False),  # same time, lower id → the open
        (9, DAY + 6_000, 12.0, 1.0, False),
        (9, DAY + 6_000, 12.0, 1.0, False),  # redelivered
    ]
    out = compute.trades_to_1m(_trades(rows))
    assert out["open"].tolist() == [10.0] and out["close"].tolist() == [12.0]
    assert out["volume"].tolist() == [3.0] and out["trades"].tolist() == [3]


def test_complete_trade_minutes_follows_agg_id_continuity() -> None:
    # minutes 0..4, ids: m0: 1,2  m1: 3  m2: 5 (4 is lost)  m3: 6  m4: 7
    rows = [
        (1, DAY + 1, 1, 1, True),
        (2, DAY + 2, 1, 1, True),
        (3, DAY + MINUTE_MS, 1, 1, True),
        (5, DAY + 2 * MINUTE_MS, 1, 1, True),
        (6, DAY + 3 * MINUTE_MS, 1, 1, True),
        (7, DAY + 4 * MINUTE_MS, 1, 1, True),
        (8, DAY + 6 * MINUTE_MS, 1, 1, True),  # m5 has no trade but ids 7 → 8 straddle it
    ]
    minutes = DAY + np.arange(6, dtype=np.int64) * MINUTE_MS
    complete, empty = build.complete_trade_minutes(_trades(rows), minutes)
    # m0 at the input's start cannot be proven; the hole 3→5 touches m1 and m2.
    assert complete.tolist() == [M(3), M(4), M(5)]
    assert empty.tolist() == [M(5)]


def _loop_1m(df: pd.DataFrame) -> dict[int, dict[str, float]]:
    """Independent computation: a plain loop over trades in (time, agg_id) order."""
    out: dict[int, dict[str, float]] = {}
    for r in sorted(df.itertuples(index=False), key=lambda r: (r.trade_time, r.agg_id)):
        m = r.trade_time // 60_000 * 60_000
        c = out.setdefault(
            m,
            {
                "open": r.price,
                "high": r.price,
                "low": r.price,
                "close": r.price,
                "volume": 0.0,
                "quote_volume": 0.0,
                "taker_buy_volume": 0.0,
                "taker_buy_quote_volume": 0.0,
                "trades": 0,
            },
        )
        c["high"] = max(c["high"], r.price)
        c["low"] = min(c["low"], r.price)
        c["close"] = r.price
        c["volume"] += r.qty
        c["quote_volume"] += r.price * r.qty
        if not r.buyer_is_maker:
            c["taker_buy_volume"] += r.qty
            c["taker_buy_quote_volume"] += r.price * r.qty
        c["trades"] += 1
    return out


def test_trades_to_1m_matches_plain_loop_on_random_trades() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame(
        {
            "agg_id": rng.permutation(n) + 1000,
            "trade_time": DAY + rng.integers(0, 30 * MINUTE_MS, n),
            "price": np.round(rng.uniform(27000, 27100, n), 1),
            "qty": np.round(rng.uniform(0.001, 2, n), 3),
            "buyer_is_maker": rng.random(n) < 0.5,
        }
    )
    got = compute.trades_to_1m(df)
    want = _loop_1m(df)
    assert got["open_time"].tolist() == sorted(want)
    for row in got.itertuples(index=False):
        w = want[row.open_time]
        for k in (
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "taker_buy_volume",
            "taker_buy_quote_volume",
        ):
            assert close(getattr(row, k), w[k]), (row.open_time, k)
        assert row.trades == w["trades"]


def test_trades_to_1m_empty() -> None:
    out = compute.trades_to_1m(_trades([]))
    assert out.empty and "open_time" in out


# --------------------------------------------------------------------------- a day's grid


def _candle_frame(open_times: list[int], price: float) -> pd.DataFrame:
    n = len(open_times)
    return pd.DataFrame(
        {
            "open_time": np.array(open_times, dtype=np.int64),
            "open": [price] * n,
            "high": [price + 1] * n,
            "low": [price - 1] * n,
            "close": [price] * n,
            "volume": [1.0] * n,
            "quote_volume": [price] * n,
            "taker_buy_volume": [0.5] * n,
            "taker_buy_quote_volume": [price / 2] * n,
            "trades": [1] * n,
        }
    )


def M(i: int) -> int:
    return DAY + i * MINUTE_MS


def test_choose_versions_precedence() -> None:
    klines = _candle_frame([M(0)], 1.0).assign(source="kline")
    rest = _candle_frame([M(0), M(1), M(4)], 2.0).assign(source="rest")
    trades = _candle_frame([M(0), M(1), M(2), M(4)], 3.0).assign(source="agg_trades")
    chosen = build.choose_versions([trades, rest, klines])
    assert chosen["open_time"].tolist() == [M(0), M(1), M(2), M(4)]
    # websocket kline, then REST (the exchange's settled row), then complete trades
    assert chosen["source"].tolist() == ["kline", "rest", "agg_trades", "rest"]
    assert chosen["open"].tolist() == [1.0, 2.0, 3.0, 2.0]
    assert build.choose_versions([]).empty
    assert compute.source_rank("kline") < compute.source_rank("rest") < compute.source_rank("agg_trades")
    assert compute.candle_source("ws") == "kline" and compute.candle_source(None) == "kline"


def test_group_into_ranges() -> None:
    miss = [M(2), M(3), M(4), M(6), M(7), M(8)]
    assert compute.group_into_ranges(miss, MINUTE_MS) == [(M(2), M(5)), (M(6), M(9))]
    assert compute.group_into_ranges([M(7), M(2), M(3), M(3)], MINUTE_MS) == [(M(2), M(4)), (M(7), M(8))]
    assert compute.group_into_ranges(np.arange(M(0), M(5), MINUTE_MS), MINUTE_MS, max_count=2) == [
        (M(0), M(2)),
        (M(2), M(4)),
        (M(4), M(5)),
    ]
    assert compute.group_into_ranges([], MINUTE_MS) == []


# --------------------------------------------------------------------------- resampling


def _random_1m(n_minutes: int, start: int, seed: int, drop: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close_ = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n_minutes)))
    open_ = np.r_[100.0, close_[:-1]]
    high = np.maximum(open_, close_) * (1 + rng.uniform(0, 1e-3, n_minutes))
    low = np.minimum(open_, close_) * (1 - rng.uniform(0, 1e-3, n_minutes))
    vol = rng.uniform(0, 10, n_minutes)
    df = pd.DataFrame(
        {
            "open_time": start + np.arange(n_minutes, dtype=np.int64) * MINUTE_MS,
            "close_time": start + np.arange(n_minutes, dtype=np.int64) * MINUTE_MS + MINUTE_MS - 1,
            "open": open_,
            "high": high,
            "low": low,
            "close": close_,
            "volume": vol,
            "quote_volume": vol * close_,
            "taker_buy_volume": vol / 2,
            "taker_buy_quote_volume": vol * close_ / 2,
            "trades": rng.integers(0, 50, n_minutes),
            "source": "kline",
        }
    )
    if drop:
        df = df[rng.random(n_minutes) >= drop].reset_index(drop=True)
    return df


def _loop_resample(df: pd.DataFrame, step: int) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for r in df.sort_values("open_time").to_dict("records"):
        b = r["open_time"] - r["open_time"] % step
        if b not in out:
            out[b] = {k: r[k] for k in ("open", "high", "low", "close")}
            out[b].update(
                {
                    k: 0.0
                    for k in ("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume", "trades", "n")
                }
            )
        c = out[b]
        c["high"] = max(c["high"], r["high"])
        c["low"] = min(c["low"], r["low"])
        c["close"] = r["close"]
        for k in ("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume", "trades"):
            c[k] += r[k]
        c["n"] += 1
    return out


@pytest.mark.parametrize("interval", ["5m", "15m", "1h", "4h", "1d"])
def test_resample_matches_plain_loop(interval: str) -> None:
    step = compute.interval_ms(interval)
    df = _random_1m(2 * 1440, DAY, seed=11, drop=0.002)
    shuffled = df.sample(frac=1.0, random_state=1)  # order must not matter
    got, incomplete = compute.resample(shuffled, interval)
    want = _loop_resample(df, step)
    per = step // MINUTE_MS
    complete = {b: c for b, c in want.items() if c["n"] == per}
    assert got["open_time"].tolist() == sorted(complete)
    assert sorted(incomplete.tolist()) == sorted(b for b, c in want.items() if c["n"] < per)
    for row in got.to_dict("records"):
        w = complete[row["open_time"]]
        for k in (
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "taker_buy_volume",
            "taker_buy_quote_volume",
        ):
            assert close(row[k], w[k]), (interval, row["open_time"], k)
        assert row["trades"] == w["trades"]
        assert row["close_time"] == row["open_time"] + step - 1
        assert row["source"] == "derived"


def test_resample_alignment_4h_and_1d_utc() -> None:
    df = _random_1m(1440, DAY, seed=5)
    bars_4h, _ = compute.resample(df, "4h")
    hours = [dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC).hour for t in bars_4h["open_time"]]
    assert hours == [0, 4, 8, 12, 16, 20]
    bars_1d, incomplete = compute.resample(df, "1d")
    assert bars_1d["open_time"].tolist() == [DAY] and incomplete.size == 0
    assert bars_1d["open"].iloc[0] == df["open"].iloc[0] and bars_1d["close"].iloc[0] == df["close"].iloc[-1]
    assert compute.buckets_in_day("4h") == 6 and compute.buckets_in_day("5m") == 288
    with pytest.raises(ValueError):
        compute.interval_ms("1w")


def test_resampled_volumes_carry_no_float_summation_noise() -> None:
    """These five minute volumes sum to 124.804 in decimal, to 124.80400000000002 in floats."""
    df = _random_1m(5, DAY, seed=7)
    minute_volumes = [6.718, 42.372, 38.189, 12.753, 24.772]
    for v in compute.VOLUME_COLUMNS:
        df[v] = minute_volumes
    assert np.add.reduceat(np.array(minute_volumes), [0])[0] != 124.804  # the noise the rounding removes
    bars, _ = compute.resample(df, "5m")
    assert bars["volume"].tolist() == [124.804] and bars["taker_buy_quote_volume"].tolist() == [124.804]


def test_resample_confirmed_missing_open_bucket_and_partial_mode() -> None:
    df = _random_1m(20, DAY, seed=9)
    df = df[df["open_time"] != M(2)]  # hole in the first 5m bucket
    bars, incomplete = compute.resample(df, "5m", now_ms=M(17))
    assert bars["open_time"].tolist() == [M(5), M(10)]  # 0 has a hole; 15 is still open at M(17)
    assert incomplete.tolist() == [M(0)]
    bars, incomplete = compute.resample(df, "5m", now_ms=M(17), confirmed_missing={M(2)})
    assert bars["open_time"].tolist() == [M(0), M(5), M(10)] and incomplete.size == 0
    assert close(bars["volume"].iloc[0], df[df["open_time"] < M(5)]["volume"].sum())
    bars, _ = compute.resample(df, "5m", complete_only=False)
    assert bars["open_time"].tolist() == [M(0), M(5), M(10), M(15)]
    dup = pd.concat([df, df.iloc[[0]]], ignore_index=True)
    assert compute.resample(dup, "5m").candles.equals(compute.resample(df, "5m").candles)
    assert compute.resample(df.iloc[:0], "5m").candles.empty
