"""Candle computation: documents → frames, trades → 1m candles, a day's 1m grid, resampling.

Pure numpy/pandas, no Dagster and no store: the asset glue reads documents, calls these
functions and writes what they return. Everything is vectorized (sort once, then
``np.*.reduceat`` over bucket boundaries) because a busy symbol has millions of
aggregated trades a day; ``bench/bench_candles.py`` measures the rates.

Conventions (docs/DATA_MODEL.md): times are int64 epoch ms UTC; a bucket is
``[open, open + interval)`` with ``open = t - t % interval_ms`` (epoch aligned, which
equals Binance's UTC alignment for every interval that divides a day); ``close_time =
open_time + interval_ms - 1``; derived candles hold float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from dm_resources.contracts import CANDLE_FLOAT_FIELDS, CANDLE_PRICE_FIELDS, CANDLE_VOLUME_FIELDS
from dm_resources.intervals import DAY_DIVIDING_INTERVAL_MS, DAY_MS, MINUTE_MS

# Only intervals that divide a UTC day are supported: their buckets are epoch aligned.
# 3d, 1w and 1M are calendar aligned on Binance and are not derived here.
INTERVAL_MS = DAY_DIVIDING_INTERVAL_MS

PRICE_COLUMNS = CANDLE_PRICE_FIELDS
VOLUME_COLUMNS = CANDLE_VOLUME_FIELDS
FLOAT_COLUMNS = CANDLE_FLOAT_FIELDS
# Binance reports volumes with at most 8 decimals, so the exact sum of minute volumes has at most
# 8 too: rounding a float sum there drops the summation noise (3065.7870000000003 -> 3065.787).
VOLUME_DECIMALS = 8
CANDLE_COLUMNS = ("open_time", "close_time", *FLOAT_COLUMNS, "trades", "source")

# Source names written to ``candles.source``.
SOURCE_KLINE = "kline"
SOURCE_REST = "rest"
SOURCE_ARCHIVE = "archive"  # Binance's public archive files (dm_resources/binance_archive.py)
SOURCE_TRADES = "agg_trades"
SOURCE_DERIVED = "derived"
# ``klines.source`` (raw collection) → ``candles.source``. A raw kline from another writer of
# exchange klines (e.g. the platform's extractor) is one more line here.
_KLINE_SOURCE_MAP = {"ws": SOURCE_KLINE, "rest": SOURCE_REST, SOURCE_KLINE: SOURCE_KLINE, SOURCE_REST: SOURCE_REST}
# The platform's extractor jobs fetch klines from the exchange's REST API and write them through /api/v1.
_KLINE_SOURCE_MAP["extractor"] = SOURCE_REST
# Which version of a minute wins when several sources have it (lower wins); see
# ``build.build_1m_day`` for why. Sources that disagree are reconciled, not ranked.
# The archive ranks below REST: both are the exchange's settled record, and a minute REST was asked
# about (a gap fill, a repair) stays as REST answered; the archive is reconciled against it.
SOURCE_PRECEDENCE: dict[str, int] = {SOURCE_KLINE: 0, SOURCE_REST: 1, SOURCE_ARCHIVE: 2, SOURCE_TRADES: 3}
#: Sources with no raw documents behind them: their stored candles are the record (rebuilt from, never dropped).
SETTLED_SOURCES = frozenset({SOURCE_REST, SOURCE_ARCHIVE})


def candle_source(raw_source: str | None) -> str:
    """The ``candles.source`` of a raw ``klines`` document's ``source`` (unknown writers count as klines)."""
    return _KLINE_SOURCE_MAP.get(raw_source or "ws", SOURCE_KLINE)


def source_rank(source: str) -> int:
    """Precedence of a candle source, lower wins; unknown sources rank last."""
    return SOURCE_PRECEDENCE.get(source, len(SOURCE_PRECEDENCE))


def interval_ms(interval: str) -> int:
    """Milliseconds of an epoch-aligned interval; ValueError for calendar-aligned ones (3d, 1w, 1M)."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise ValueError(f"unsupported interval {interval!r}; supported: {', '.join(INTERVAL_MS)}") from None


def buckets_in_day(interval: str) -> int:
    return DAY_MS // interval_ms(interval)


def floor_time(t_ms: int, step_ms: int = MINUTE_MS) -> int:
    return int(t_ms) - int(t_ms) % step_ms


def empty_candles() -> pd.DataFrame:
    frame = pd.DataFrame({c: np.empty(0, dtype=np.float64) for c in CANDLE_COLUMNS})
    frame["open_time"] = frame["open_time"].astype(np.int64)
    frame["close_time"] = frame["close_time"].astype(np.int64)
    frame["trades"] = frame["trades"].astype(np.int64)
    frame["source"] = frame["source"].astype(object)
    return frame


# ---------------------------------------------------------------------------------------------
# Decimal128 → float64
# ---------------------------------------------------------------------------------------------

_POW10 = np.array([float(10**k) for k in range(23)])  # 10^0..10^22 are exact in float64
_COEF_HI_MASK = np.uint64((1 << 49) - 1)
_TWO53 = np.uint64(1 << 53)


def _one_to_float(v: Any) -> float:
    if v is None:
        return float("nan")
    if isinstance(v, int | float):
        return float(v)
    return float(str(v))  # Decimal128, Decimal, str: the decimal string is the exact value


def decimals_to_float(values: Sequence[Any]) -> np.ndarray:
    """Exact-decimal values (Decimal128, Decimal, str, numbers, None) → float64, correctly rounded.

    Why not ``float(str(d))`` for all: it costs ~4 µs per value, i.e. seconds for a busy
    day. This decodes Decimal128's BID bytes in numpy instead (~16× faster): for a
    coefficient < 2^53 and |exponent| ≤ 22 both ``coef`` and ``10^|exp|`` are exact
    doubles, so the one IEEE multiplication/division is correctly rounded — the same
    double ``float(str(d))`` returns (Clinger's fast path). Anything else (34-digit
    coefficients, NaN/Infinity, non-Decimal128 values) falls back to ``float(str(v))``.
    """
    n = len(values)
    if n == 0:
        return np.empty(0, dtype=np.float64)
    try:
        raw = b"".join([v.bid for v in values])
    except AttributeError:  # not all Decimal128
        return np.array([_one_to_float(v) for v in values], dtype=np.float64)
    words = np.frombuffer(raw, dtype="<u8").reshape(n, 2)
    lo, hi = words[:, 0], words[:, 1]
    special = (hi >> np.uint64(61)) & np.uint64(3) == np.uint64(3)
    exp = ((hi >> np.uint64(49)) & np.uint64(0x3FFF)).astype(np.int64) - 6176
    fast = ~special & ((hi & _COEF_HI_MASK) == 0) & (lo < _TWO53) & (np.abs(exp) <= 22)
    coef = lo.astype(np.float64)
    scale = _POW10[np.clip(np.abs(exp), 0, 22)]
    out = np.where(exp < 0, coef / scale, coef * scale)
    out = np.where((hi >> np.uint64(63)) == 1, -out, out)
    slow = np.flatnonzero(~fast)
    for i in slow.tolist():
        out[i] = _one_to_float(values[i])
    return out


def _ints(docs: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.fromiter((d[key] for d in docs), dtype=np.int64, count=len(docs))


def _floats(docs: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return decimals_to_float([d.get(key) for d in docs])


def agg_trades_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``agg_trades`` documents → frame: agg_id, trade_time, price, qty, buyer_is_maker
    [, first_trade_id, last_trade_id when every document has them]."""
    docs = list(docs)
    cols = ["agg_id", "trade_time", "price", "qty", "buyer_is_maker"]
    if not docs:
        return pd.DataFrame(
            {c: np.empty(0, dtype=np.int64 if c in ("agg_id", "trade_time") else np.float64) for c in cols}
        )
    frame = pd.DataFrame(
        {
            "agg_id": _ints(docs, "agg_id"),
            "trade_time": _ints(docs, "trade_time"),
            "price": _floats(docs, "price"),
            "qty": _floats(docs, "qty"),
            "buyer_is_maker": np.fromiter((bool(d["buyer_is_maker"]) for d in docs), dtype=bool, count=len(docs)),
        }
    )
    if all("first_trade_id" in d and "last_trade_id" in d for d in docs):
        frame["first_trade_id"] = _ints(docs, "first_trade_id")
        frame["last_trade_id"] = _ints(docs, "last_trade_id")
    return frame


def klines_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``klines`` documents → candle frame; ``source`` ws → "kline", rest → "rest".

    ``close_time`` is taken from the document; an ``interval`` column is kept when the
    documents carry one so callers can filter a mixed read.
    """
    docs = list(docs)
    if not docs:
        return empty_candles()
    data: dict[str, Any] = {"open_time": _ints(docs, "open_time")}
    if all("close_time" in d for d in docs):
        data["close_time"] = _ints(docs, "close_time")
    else:
        data["close_time"] = data["open_time"] + MINUTE_MS - 1
    for c in FLOAT_COLUMNS:
        data[c] = _floats(docs, c)
    data["trades"] = np.fromiter((int(d.get("trades") or 0) for d in docs), dtype=np.int64, count=len(docs))
    data["source"] = [candle_source(d.get("source")) for d in docs]
    if all("interval" in d for d in docs):
        data["interval"] = [d["interval"] for d in docs]
    return pd.DataFrame(data)


def candles_frame(docs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``candles`` documents (already float64) → candle frame, sorted by open_time."""
    docs = list(docs)
    if not docs:
        return empty_candles()
    data: dict[str, Any] = {"open_time": _ints(docs, "open_time"), "close_time": _ints(docs, "close_time")}
    for c in FLOAT_COLUMNS:
        data[c] = np.fromiter((float(d.get(c, np.nan)) for d in docs), dtype=np.float64, count=len(docs))
    data["trades"] = np.fromiter((int(d.get("trades") or 0) for d in docs), dtype=np.int64, count=len(docs))
    data["source"] = [d.get("source") for d in docs]
    data["flags"] = [list(d.get("flags") or ()) for d in docs]
    frame = pd.DataFrame(data)
    if all("interval" in d for d in docs):
        frame["interval"] = [d["interval"] for d in docs]
    return frame.sort_values("open_time", kind="stable", ignore_index=True)


def candles_to_documents(df: pd.DataFrame, symbol: str, interval: str) -> list[dict[str, Any]]:
    """Candle frame → ``candles`` documents with ``_id = SYM:interval:open_time``.

    Every document carries ``flags`` (a sorted list, empty for a clean candle; see
    ``integrity.FLAG_*``). ``close_time`` is recomputed from ``open_time`` (never trusted from the frame) and
    every value is a plain Python int/float/str, which is what BSON encodes.
    """
    if df.empty:
        return []
    step = interval_ms(interval)
    open_time = df["open_time"].to_numpy(dtype=np.int64)
    if np.any(open_time % step):
        raise ValueError(f"open_time not aligned to {interval}")
    cols = {c: df[c].to_numpy(dtype=np.float64).tolist() for c in FLOAT_COLUMNS}
    trades = df["trades"].to_numpy(dtype=np.int64).tolist() if "trades" in df else [0] * len(df)
    default_source = SOURCE_DERIVED if interval != "1m" else SOURCE_TRADES
    sources = df["source"].tolist() if "source" in df else [default_source] * len(df)
    flags = None
    if "flags" in df:
        seqs = (list, tuple, set)
        flags = [sorted(set(f)) if isinstance(f, seqs) else [] for f in df["flags"]]
    docs: list[dict[str, Any]] = []
    for i, ot in enumerate(open_time.tolist()):
        doc: dict[str, Any] = {
            "_id": f"{symbol}:{interval}:{ot}",
            "symbol": symbol,
            "interval": interval,
            "open_time": ot,
            "close_time": ot + step - 1,
        }
        for c in FLOAT_COLUMNS:
            doc[c] = cols[c][i]
        doc["trades"] = trades[i]
        doc["source"] = sources[i]
        doc["flags"] = flags[i] if flags is not None else []
        docs.append(doc)
    return docs


# ---------------------------------------------------------------------------------------------
# agg trades → 1m candles
# ---------------------------------------------------------------------------------------------


def _trade_order(t: np.ndarray, agg: np.ndarray | None) -> np.ndarray | None:
    """Permutation to (trade_time, agg_id) order, or None when the input already is (the usual case:
    reads come through the (symbol, trade_time, agg_id) index), so a sorted 5M-row input costs no sort."""
    dt = np.diff(t)
    if agg is None:
        return None if not np.any(dt < 0) else np.argsort(t, kind="stable")
    if not np.any(dt < 0) and not np.any((dt == 0) & (np.diff(agg) < 0)):
        return None
    # Agg ids are assigned in time order, so sorting by id alone (one int64 key) usually gives
    # (time, id) order too, ~4× faster than a two-key lexsort; verify before trusting it.
    by_id = np.argsort(agg, kind="stable")
    if not np.any(np.diff(t[by_id]) < 0):
        return by_id
    return np.lexsort((agg, t))


def trades_to_1m(trades: pd.DataFrame) -> pd.DataFrame:
    """1m candles from aggregated trades (``trade_time, price, qty, buyer_is_maker`` [``agg_id``,
    ``first_trade_id``, ``last_trade_id``]).

    * bucket ``[open, open + 60 000)``: a trade at exactly ``open + 60 000`` opens the next minute;
    * open/close = first/last trade in (trade_time, agg_id) order (input order breaks ties without agg_id);
    * ``buyer_is_maker`` False means the taker bought, so it counts in ``taker_buy_*``;
    * ``trades`` is Binance's kline ``n``, a count of *raw* trades: Σ(last_trade_id − first_trade_id + 1)
      when those columns are present, else the number of aggregated trades (a lower bound);
    * sums are sequential float64 sums (relative error ≲ n·2⁻⁵³ per minute);
    * rows repeating an ``agg_id`` are dropped (a redelivered trade must not count twice).

    Whether the trades of a minute are *complete* is decided by ``build.complete_trade_minutes``.
    """
    t = trades["trade_time"].to_numpy(dtype=np.int64)
    n = len(t)
    has_agg = "agg_id" in trades
    if n == 0:
        return empty_candles().drop(columns="source")
    p = trades["price"].to_numpy(dtype=np.float64)
    q = trades["qty"].to_numpy(dtype=np.float64)
    m = trades["buyer_is_maker"].to_numpy(dtype=bool)
    agg = trades["agg_id"].to_numpy(dtype=np.int64) if has_agg else None
    has_ids = "first_trade_id" in trades and "last_trade_id" in trades
    f = trades["first_trade_id"].to_numpy(dtype=np.int64) if has_ids else None
    la = trades["last_trade_id"].to_numpy(dtype=np.int64) if has_ids else None

    order = _trade_order(t, agg)
    if agg is not None:
        srt = agg if order is None else agg[order]
        dup = srt[1:] == srt[:-1]  # after sorting, a repeated agg id (same time) is adjacent
        if dup.any():
            keep = np.r_[True, ~dup]
            order = np.flatnonzero(keep) if order is None else order[keep]
    if order is not None:
        t, p, q, m = t[order], p[order], q[order], m[order]
        agg = agg[order] if agg is not None else None
        if has_ids:
            f, la = f[order], la[order]  # type: ignore[index]  # not None when has_ids
        n = len(t)

    minute = t - t % MINUTE_MS
    starts = np.flatnonzero(np.r_[True, minute[1:] != minute[:-1]])
    ends = np.r_[starts[1:], n]
    pq = p * q
    buy = ~m
    out = pd.DataFrame(
        {
            "open_time": minute[starts],
            "close_time": minute[starts] + (MINUTE_MS - 1),
            "open": p[starts],
            "high": np.maximum.reduceat(p, starts),
            "low": np.minimum.reduceat(p, starts),
            "close": p[ends - 1],
            "volume": np.add.reduceat(q, starts),
            "quote_volume": np.add.reduceat(pq, starts),
            "taker_buy_volume": np.add.reduceat(np.where(buy, q, 0.0), starts),
            "taker_buy_quote_volume": np.add.reduceat(np.where(buy, pq, 0.0), starts),
            "trades": np.add.reduceat(la - f + 1, starts) if has_ids else (ends - starts).astype(np.int64),  # type: ignore[operator]  # ids present
        }
    )
    return out


# ---------------------------------------------------------------------------------------------
# A day's 1m grid
# ---------------------------------------------------------------------------------------------


def group_into_ranges(
    open_times: Iterable[int] | np.ndarray, step: int = MINUTE_MS, *, max_count: int | None = None
) -> list[tuple[int, int]]:
    """Contiguous runs of open times as ``[start, end)`` ranges (``end`` = last + step).

    Used to ask REST for a set of missing minutes in as few requests as possible;
    ``max_count`` splits runs longer than one request may return (1500 on Binance).
    """
    ts = np.unique(
        np.fromiter(open_times, dtype=np.int64)
        if not isinstance(open_times, np.ndarray)
        else open_times.astype(np.int64)
    )
    if ts.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(ts) != step) + 1
    firsts = np.r_[ts[0], ts[breaks]]
    lasts = np.r_[ts[breaks - 1], ts[-1]]
    ranges: list[tuple[int, int]] = []
    for s, e in zip(firsts.tolist(), (lasts + step).tolist(), strict=True):
        if max_count is None:
            ranges.append((s, e))
            continue
        chunk = max_count * step
        ranges.extend((c, min(c + chunk, e)) for c in range(s, e, chunk))
    return ranges


# ---------------------------------------------------------------------------------------------
# Resampling 1m → higher intervals
# ---------------------------------------------------------------------------------------------


class Resampled(NamedTuple):
    candles: pd.DataFrame  # complete buckets, source "derived"
    incomplete: np.ndarray  # open times of buckets with some but not all minutes accounted for


def resample(
    candles_1m: pd.DataFrame,
    interval: str,
    *,
    confirmed_missing: Iterable[int] = (),
    now_ms: int | None = None,
    complete_only: bool = True,
) -> Resampled:
    """Higher-interval candles from 1m candles, Binance-aligned (bucket = open − open % interval).

    open = first minute's open, close = last minute's close, high/low = max/min, volumes and
    ``trades`` = sums. A bucket is emitted only when each of its minutes is present or
    confirmed missing: Binance would publish a bucket with minutes missing *from our copy*
    with different values, so a partial bucket would pose as the exchange's kline with wrong
    numbers. Partial buckets are returned in ``incomplete`` instead (the still-open bucket,
    one containing ``now``, is never emitted and not reported); ``complete_only=False``
    emits them too. Buckets whose minutes are all confirmed missing have no data and are not
    emitted. Duplicate 1m open times keep the first row (the 1m build resolved precedence).
    """
    step = interval_ms(interval)
    per = step // MINUTE_MS
    if candles_1m.empty:
        return Resampled(empty_candles(), np.empty(0, dtype=np.int64))
    df = candles_1m
    ot = df["open_time"].to_numpy(dtype=np.int64)
    if np.any(ot % MINUTE_MS):
        raise ValueError("1m open_time not minute aligned")
    if np.any(np.diff(ot) <= 0):
        order = np.argsort(ot, kind="stable")
        ot = ot[order]
        keep = np.r_[True, ot[1:] != ot[:-1]]
        idx = order[keep]
        ot = ot[keep]
    else:
        idx = None

    def col(name: str, dtype: type) -> np.ndarray:
        a = df[name].to_numpy(dtype=dtype)
        return a if idx is None else a[idx]

    bucket = ot - ot % step
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(ot)]
    opens = bucket[starts]
    counts = ends - starts

    excused = np.unique(np.fromiter(confirmed_missing, dtype=np.int64))
    if excused.size:
        excused = excused[~np.isin(excused, ot)]
        eb, ec = np.unique(excused - excused % step, return_counts=True)
        pos = np.searchsorted(eb, opens)
        hit = (pos < eb.size) & (eb[np.minimum(pos, eb.size - 1)] == opens)
        counts = counts + np.where(hit, ec[np.minimum(pos, eb.size - 1)], 0)
    complete = counts >= per
    closed = np.ones(len(opens), dtype=bool) if now_ms is None else opens + step <= now_ms
    incomplete = opens[~complete & closed]
    emit = (complete | (not complete_only)) & (closed | (not complete_only))

    o, h, lo, c = (col(n, np.float64) for n in PRICE_COLUMNS)
    out = pd.DataFrame(
        {
            "open_time": opens,
            "close_time": opens + (step - 1),
            "open": o[starts],
            "high": np.maximum.reduceat(h, starts),
            "low": np.minimum.reduceat(lo, starts),
            "close": c[ends - 1],
            **{v: np.round(np.add.reduceat(col(v, np.float64), starts), VOLUME_DECIMALS) for v in VOLUME_COLUMNS},
            "trades": np.add.reduceat(col("trades", np.int64), starts),
            "source": SOURCE_DERIVED,
        }
    )
    out = out[list(CANDLE_COLUMNS)]
    if not emit.all():
        out = out[emit].reset_index(drop=True)
    return Resampled(out, incomplete.astype(np.int64))
