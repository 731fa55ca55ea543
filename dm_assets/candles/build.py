"""Building one (day, symbol) partition of candles from the stores: the asset bodies' logic.

Plain functions over the plain store classes, so they are tested without Dagster
against real servers and the fake exchange.

Where a 1m candle comes from, in order of trust:

1. ``kline`` — the exchange's own closed kline from the websocket (``klines``, source ws);
   klines already in ``klines`` from a REST fill or an extractor (source ``rest``/``extractor``,
   written through ``/api/v1``) are used as they are, so their minutes need no REST request;
2. ``agg_trades`` — built from aggregated trades, but only for minutes the trades are
   *provably complete* for: Binance's aggregate trade ids are consecutive per symbol,
   so a minute is complete when the ids inside it are consecutive and join up with the
   last trade before it and the first trade after it. This also proves a minute with
   no trades at all (ids ``a`` and ``a+1`` straddle it): its candle is flat at the
   previous close with zero volume, as Binance reports it;
3. ``rest`` — fetched from ``GET /fapi/v1/klines`` for what is still missing, and stored
   in the raw ``klines`` collection with source ``rest`` (so a re-run reads it back and
   writes the same candle);
4. still missing after that: an attempt is counted in the metadata store; after
   ``confirm_after`` attempts the minute is *confirmed missing* (an exchange outage)
   and never asked for again.

The still-open minute (the one containing ``now``) and later ones are not built.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dm_assets.candles import compute
from dm_assets.partitions import day_bounds_ms
from dm_resources.candle_store import CandleStore

if TYPE_CHECKING:
    from dm_resources.binance import BinanceClient
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
CONFIRM_AFTER_ATTEMPTS = 3


@dataclass
class DayBuild:
    """What a partition's materialization did; becomes asset metadata."""

    symbol: str
    day: str
    interval: str = "1m"
    expected: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    confirmed_missing: list[int] = field(default_factory=list)
    rest_requests: int = 0
    rest_rows: int = 0
    upserted: int = 0
    modified: int = 0
    rows: int = 0
    rest_error: str | None = None

    @property
    def complete(self) -> bool:
        return not self.missing

    def as_metadata(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "day": self.day,
            "interval": self.interval,
            "rows": self.rows,
            "expected": self.expected,
            "by_source": dict(self.by_source),
            "missing": len(self.missing),
            "confirmed_missing": len(self.confirmed_missing),
            "rest_requests": self.rest_requests,
            "rest_rows": self.rest_rows,
            "upserted": self.upserted,
            "modified": self.modified,
            "rest_error": self.rest_error or "",
        }


def now_ms() -> int:
    return int(time.time() * 1000)


def expected_minutes(day: str, now: int) -> np.ndarray:
    """Open times of the day's closed minutes: the full day in the past, up to the open minute today."""
    start, end = day_bounds_ms(day)
    end = min(end, now - now % MINUTE_MS)
    if end <= start:
        return np.empty(0, dtype=np.int64)
    return np.arange(start, end, MINUTE_MS, dtype=np.int64)


def complete_trade_minutes(trades: pd.DataFrame, minutes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``minutes`` into (minutes the trades prove complete, of which those with no trades at all).

    ``trades`` holds ``agg_id`` and ``trade_time`` for a window wider than ``minutes`` by at
    least one trade on each side. A minute is complete when the agg ids from the last trade
    before it to the first trade after it run without a hole.
    """
    if trades.empty or minutes.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    t = trades.sort_values(["agg_id"])
    ids = t["agg_id"].to_numpy(dtype=np.int64)
    times = t["trade_time"].to_numpy(dtype=np.int64)
    if np.any(np.diff(times) < 0):  # ids and times disagree: do not trust contiguity
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    # For each minute: index of the first trade at/after its start and at/after its end.
    lo = np.searchsorted(times, minutes, side="left")
    hi = np.searchsorted(times, minutes + MINUTE_MS, side="left")
    has_before = lo > 0
    has_after = hi < len(times)
    ok = has_before & has_after
    # With a trade on each side, contiguity of ids[lo-1 .. hi] means ids[hi] - ids[lo-1] == hi - lo + 1.
    before_id = np.where(has_before, ids[np.maximum(lo - 1, 0)], 0)
    after_id = np.where(has_after, ids[np.minimum(hi, len(ids) - 1)], 0)
    ok &= (after_id - before_id) == (hi - lo + 1)
    complete = minutes[ok]
    empty = minutes[ok & (hi == lo)]
    return complete, empty


def _flat_candles(minutes: np.ndarray, trades: pd.DataFrame) -> pd.DataFrame:
    """Zero-volume minutes: OHLC at the last traded price before each minute."""
    t = trades.sort_values("trade_time")
    times = t["trade_time"].to_numpy(dtype=np.int64)
    prices = t["price"].to_numpy(dtype=np.float64)
    idx = np.searchsorted(times, minutes, side="left") - 1
    px = prices[idx]
    zeros = np.zeros(len(minutes))
    return pd.DataFrame(
        {
            "open_time": minutes,
            "open": px,
            "high": px,
            "low": px,
            "close": px,
            "volume": zeros,
            "quote_volume": zeros,
            "taker_buy_volume": zeros,
            "taker_buy_quote_volume": zeros,
            "trades": np.zeros(len(minutes), dtype=np.int64),
        }
    )


def _read_trades(store: MongoStore, symbol: str, start: int, end: int) -> pd.DataFrame:
    """Trades in [start, end) plus the nearest trade on each side (needed for the contiguity proof)."""
    proj = {
        "_id": 0,
        "agg_id": 1,
        "trade_time": 1,
        "price": 1,
        "qty": 1,
        "buyer_is_maker": 1,
        "first_trade_id": 1,
        "last_trade_id": 1,
    }
    docs = store.read_range("agg_trades", symbol, start - MINUTE_MS, end + MINUTE_MS, projection=proj)
    return compute.agg_trades_frame(docs)


def build_1m_day(
    store: MongoStore,
    meta: MetadataStore,
    client: BinanceClient | None,
    symbol: str,
    day: str,
    *,
    now: int | None = None,
    confirm_after: int = CONFIRM_AFTER_ATTEMPTS,
) -> DayBuild:
    """Materialize ``candles`` (1m) for one UTC day of one symbol; idempotent."""
    now = now if now is not None else now_ms()
    start = day_bounds_ms(day)[0]
    out = DayBuild(symbol=symbol, day=day)
    minutes = expected_minutes(day, now)
    out.expected = int(minutes.size)
    if minutes.size == 0:
        return out
    last = int(minutes[-1]) + MINUTE_MS
    confirmed = meta.confirmed_missing(symbol, "1m", start, last - 1)

    # 1. Exchange klines (websocket or earlier REST fills).
    kdocs = store.read_range("klines", symbol, start, last, extra={"interval": "1m"})
    klines = compute.klines_frame(kdocs)
    parts: list[pd.DataFrame] = []
    if not klines.empty:
        klines = klines[klines["open_time"].isin(minutes)].drop_duplicates("open_time")
        parts.append(klines)
    have = set(klines["open_time"].tolist()) if not klines.empty else set()
    todo = np.array([m for m in minutes if m not in have and m not in confirmed], dtype=np.int64)

    # 2. Minutes the aggregated trades prove complete.
    if todo.size:
        trade_frames = [_read_trades(store, symbol, s, e) for s, e in compute.group_into_ranges(todo, MINUTE_MS)]
        trades = (
            pd.concat([f for f in trade_frames if not f.empty], ignore_index=True)
            if any(not f.empty for f in trade_frames)
            else pd.DataFrame()
        )
        if not trades.empty:
            trades = trades.drop_duplicates("agg_id")
            complete, empty = complete_trade_minutes(trades, todo)
            with_trades = np.setdiff1d(complete, empty)
            if with_trades.size:
                built = compute.trades_to_1m(trades)
                built = built[built["open_time"].isin(with_trades)].copy()
                built["source"] = "agg_trades"
                parts.append(built)
            if empty.size:
                flat = _flat_candles(empty, trades)
                flat["source"] = "agg_trades"
                parts.append(flat)
            todo = np.setdiff1d(todo, complete)

    # 3. REST for what is still missing.
    if todo.size and client is not None:
        fetched: list[pd.DataFrame] = []
        try:
            for s, e in compute.group_into_ranges(todo, MINUTE_MS):
                rows = client.fetch_klines(symbol, "1m", s, e)
                out.rest_requests += 1
                if rows:
                    store.insert_idempotent("klines", [k.to_document(symbol, "1m", source="rest") for k in rows])
                    fetched.append(compute.klines_frame([k.to_document(symbol, "1m", source="rest") for k in rows]))
        except Exception as exc:  # an exchange error must not lose what was built from local data
            out.rest_error = f"{type(exc).__name__}: {exc}"
            log.warning("REST fill for %s %s failed: %s", symbol, day, out.rest_error)
        if fetched:
            rest = pd.concat(fetched, ignore_index=True)
            rest = rest[rest["open_time"].isin(todo)].drop_duplicates("open_time")
            out.rest_rows = len(rest)
            parts.append(rest)
            todo = np.setdiff1d(todo, rest["open_time"].to_numpy(dtype=np.int64))

    # 4. Still missing: count an attempt (only when the exchange answered: an error is not evidence).
    newly_confirmed: set[int] = set()
    if todo.size and client is not None and out.rest_error is None:
        newly_confirmed = meta.mark_missing(
            symbol, "1m", todo.tolist(), "exchange returned no kline", confirm_after_attempts=confirm_after
        )
    out.confirmed_missing = sorted(confirmed | newly_confirmed)
    out.missing = sorted(set(todo.tolist()) - newly_confirmed)

    candles = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if not candles.empty:
        candles = candles.sort_values("open_time").drop_duplicates("open_time", keep="first")
        docs = compute.candles_to_documents(candles, symbol, "1m")
        res = CandleStore(store).sync_range(symbol, "1m", start, last, docs)
        out.upserted, out.modified, out.rows = res.upserted, res.modified, len(docs)
        out.by_source = dict(Counter(candles["source"].tolist()))
    return out


def read_candles(store: MongoStore, symbol: str, interval: str, start: int, end: int) -> pd.DataFrame:
    docs = CandleStore(store).read_range(symbol, interval, start, end, projection={"_id": 0})
    return compute.candles_frame(docs)


def build_higher_day(
    store: MongoStore, meta: MetadataStore, symbol: str, day: str, interval: str, *, now: int | None = None
) -> DayBuild:
    """Derive one higher interval for one day from the stored 1m candles; idempotent.

    A bucket is written only when each of its minutes is present or confirmed missing, so
    a partial bucket never poses as the exchange's kline; incomplete buckets are reported.
    """
    now = now if now is not None else now_ms()
    start, end = day_bounds_ms(day)
    out = DayBuild(symbol=symbol, day=day, interval=interval)
    one_m = read_candles(store, symbol, "1m", start, end)
    confirmed = meta.confirmed_missing(symbol, "1m", start, end - 1)
    bars, incomplete = compute.resample(one_m, interval, confirmed_missing=confirmed, now_ms=now)
    out.expected = int(compute.buckets_in_day(interval))
    out.missing = [int(t) for t in incomplete]
    if not bars.empty:
        docs = compute.candles_to_documents(bars.assign(source="derived"), symbol, interval)
        res = CandleStore(store).sync_range(symbol, interval, start, end, docs)
        out.upserted, out.modified, out.rows = res.upserted, res.modified, len(docs)
        out.by_source = {"derived": len(docs)}
    return out
