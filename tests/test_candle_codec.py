"""The bucket codec without a server: every float back bit for bit, smaller documents, spans, old layouts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import bson
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dm_resources.candle_store import (
    FLOAT_COLUMNS,
    NUMERIC_COLUMNS,
    Bucket,
    Coded,
    decode_bucket,
    decode_span,
    encode_bucket,
)
from dm_resources.candle_store.codec import decimal_ints, encode_bucket_v1

MIN = 60_000
DAY = 86_400_000
D0 = int(dt.datetime(2026, 3, 10, tzinfo=dt.UTC).timestamp() * 1000)


def day(start: int = D0, n: int = 1440, *, seed: int = 1, holes: tuple[int, ...] = ()) -> Bucket:
    """A plausible day of 1m candles: a random walk on a 0.1 tick, volumes with 3 decimals."""
    rng = np.random.default_rng(seed)
    close = np.round(27_000 * np.exp(np.cumsum(rng.normal(0, 5e-4, n))), 1)
    vol = np.round(rng.gamma(2.0, 5.0, n), 3)
    rows = [
        {
            "open_time": start + i * MIN,
            "open": float(close[i - 1] if i else close[0]),
            "high": float(np.round(close[i] + 2.5, 1)),
            "low": float(np.round(close[i] - 1.2, 1)),
            "close": float(close[i]),
            "volume": float(vol[i]),
            "quote_volume": float(np.round(vol[i] * close[i], 2)),
            "taker_buy_volume": float(np.round(vol[i] / 2, 3)),
            "taker_buy_quote_volume": float(np.round(vol[i] * close[i] / 2, 2)),
            "trades": int(rng.integers(50, 500)),
            "source": "rest" if i % 97 == 0 else "kline",
            "flags": ["bad_print"] if i == 5 else [],
        }
        for i in range(n)
        if i not in holes
    ]
    return Bucket.from_rows("BTCUSDT", "1m", start - start % DAY, start - start % DAY + DAY, rows)


def assert_same(a: Bucket, b: Bucket) -> None:
    """Equal candle for candle, floats compared bit for bit (so -0.0 ≠ 0.0 and NaN = NaN)."""
    assert (a.symbol, a.interval, a.n) == (b.symbol, b.interval, b.n)
    for c in NUMERIC_COLUMNS:
        assert a.cols[c].dtype == b.cols[c].dtype, c
        assert np.array_equal(a.cols[c].view(np.int64), b.cols[c].view(np.int64)), c
    assert a.source.tolist() == b.source.tolist()
    assert a.flags.tolist() == b.flags.tolist()


def stored(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as a reader gets it back: through BSON, binaries as bytes."""
    return bson.decode(bson.encode(doc))


def test_a_day_round_trips_bit_for_bit_in_a_fifth_of_the_old_size() -> None:
    b = day()
    doc = encode_bucket(b, 7)
    got = decode_bucket(stored(doc))
    assert_same(got, b)
    assert got.v == 7 and doc["enc"] == 2
    # a complete day stores no open_time; prices and volumes are short decimals, stored as integers
    assert "open_time" not in doc["ints"]["cols"] and "floats" not in doc
    assert dict(zip(doc["ints"]["cols"], doc["ints"]["scale"], strict=True)) == {
        "open": 1,
        "high": 1,
        "low": 1,
        "close": 1,
        "volume": 3,
        "quote_volume": 2,
        "taker_buy_volume": 3,
        "taker_buy_quote_volume": 2,
        "trades": 0,
    }
    old, new = len(bson.encode(encode_bucket_v1(b, 7))), len(bson.encode(doc))
    assert new * 5 < old, (new, old)
    assert_same(decode_bucket(stored(encode_bucket_v1(b, 7))), b)  # the old layout still reads


def test_holes_partial_days_and_year_buckets_keep_their_open_times() -> None:
    holed = day(holes=(3, 700, 1439))
    doc = encode_bucket(holed, 1)
    assert "open_time" in doc["ints"]["cols"]  # not contiguous: stored
    assert_same(decode_bucket(stored(doc)), holed)
    partial = day(D0 + 600 * MIN, 30)  # today so far: contiguous, so still implicit
    doc = encode_bucket(partial, 1)
    assert "open_time" not in doc["ints"]["cols"] and doc["first"] == D0 + 600 * MIN
    assert_same(decode_bucket(stored(doc)), partial)
    y0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    year_rows = [{"open_time": y0 + i * DAY, "open": 1.5, "close": 2.0, "trades": 3} for i in (0, 1, 2, 40)]
    year = Bucket.from_rows("BTCUSDT", "1d", y0, y0 + 365 * DAY, year_rows)
    assert_same(decode_bucket(stored(encode_bucket(year, 1))), year)  # NaN columns for the absent fields
    empty = Bucket.empty("BTCUSDT", "1m", D0, D0 + DAY)
    assert decode_bucket(stored(encode_bucket(empty, 1))).n == 0


def test_floats_that_are_not_short_decimals_take_the_raw_path_unchanged() -> None:
    b = day(n=8)
    awkward = {
        "open": [0.1 + 0.2, 1 / 3, np.pi, 2.5, 1e-7, 3.0, 4.0, 5.0],  # no exact 12-digit decimal
        "high": [np.nan, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "low": [-0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],  # -0.0 must stay -0.0
        "close": [np.inf, -np.inf, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "volume": [1e300, 5e-324, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "quote_volume": [9_007_199_254_740_993.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],  # past 2**53
    }
    for c, values in awkward.items():
        b.cols[c] = np.array(values, dtype=np.float64)
    b.cols["trades"] = np.array([2**63 - 1, -(2**63), 0, -1, 1, 2**62, -(2**62), 7], dtype=np.int64)  # wraps
    doc = encode_bucket(b, 1)
    assert sorted(doc["floats"]["cols"]) == sorted(awkward)
    assert_same(decode_bucket(stored(doc)), b)
    assert decimal_ints(np.array([-0.0])) is None and decimal_ints(np.array([0.0])) == (0, np.array([0]))


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 40),
    step_gaps=st.lists(st.integers(1, 3), min_size=40, max_size=40),
)
def test_any_floats_and_ints_round_trip_bit_for_bit(data: st.DataObject, n: int, step_gaps: list[int]) -> None:
    floats = hnp.arrays(np.float64, n, elements=st.floats(allow_nan=True, allow_infinity=True, width=64))
    decimals = hnp.arrays(np.float64, n, elements=st.decimals(-(10**9), 10**9, places=4).map(float))
    cols: dict[str, np.ndarray] = {"open_time": D0 + np.cumsum(step_gaps[:n]).astype(np.int64) * MIN - MIN}
    for c in FLOAT_COLUMNS:
        cols[c] = data.draw(st.one_of(floats, decimals), label=c)
    cols["trades"] = data.draw(hnp.arrays(np.int64, n), label="trades")
    src = Coded.of(data.draw(st.lists(st.sampled_from(["kline", "rest", "archive"]), min_size=n, max_size=n)))
    flg = Coded.of(
        data.draw(st.lists(st.sampled_from([(), ("bad_print",), ("ohlc", "verified")]), min_size=n, max_size=n))
    )
    b = Bucket("ETHUSDT", "1m", D0, D0 + DAY, cols, src, flg)
    assert_same(decode_bucket(stored(encode_bucket(b, 3))), b)


def test_a_span_decodes_like_its_buckets_one_by_one_whatever_their_layouts() -> None:
    days = [day(D0 + i * DAY, seed=i) for i in range(4)]
    docs = [stored(encode_bucket(b, 1)) for b in days]
    docs.append(stored(encode_bucket(day(D0 + 4 * DAY, holes=(9,), seed=4), 1)))  # another shape
    docs.append(stored(encode_bucket_v1(day(D0 + 5 * DAY, seed=5), 1)))  # the old layout
    docs.append(stored(encode_bucket(day(D0 + 6 * DAY, 100, seed=6), 1)))  # a partial day
    docs[1]["ints"]["scale"][4] = 2  # a day whose volumes happened to need one decimal less
    docs[1] = stored(encode_bucket(decode_bucket(docs[1]), 1))
    span = decode_span(docs)
    assert_same(span, Bucket.concat([decode_bucket(d) for d in docs]))
    assert span.n == 4 * 1440 + 1439 + 1440 + 100 and span.start == D0 and span.end == D0 + 7 * DAY
    assert sorted(set(span.source.tolist())) == ["kline", "rest"]  # one value table across the span


def test_dictionary_columns_join_and_compact() -> None:
    a, b = Coded.of(["x", "y", "x"]), Coded.of(["z", "x"])
    joined = Coded.join([a, b])
    assert joined.tolist() == ["x", "y", "x", "z", "x"] and joined.values == ["x", "y", "z"]
    taken = joined.take(np.array([2, 3]))
    assert taken.compacted().values == ["x", "z"] and taken.compacted().tolist() == ["x", "z"]
    assert Coded.join([]).tolist() == []


def test_an_unknown_encoding_is_refused_by_name() -> None:
    doc = stored(encode_bucket(day(n=3), 1))
    doc["enc"] = 99
    with pytest.raises(ValueError, match="encoding 99, this reader knows 1, 2"):
        decode_bucket(doc)
