"""The pattern search's input, precomputed: dense close series per symbol × interval in ``pattern_series``.

Why precompute: a search over a year of 1m bars needs 525,600 closes. Read from the candle
buckets that is 365 documents of twelve columns each plus their flags; the precomputed series is
the one column the search uses, already on a regular grid with missing and flagged bars as NaN,
in chunks of :data:`CHUNK_BARS` bars (about 30 days of 1m, 346 KB) — 13 documents for the year.
The asset rewrites only the chunks whose bytes changed (normally the newest one), and a reader
appends the bars written since the asset's last run straight from the candles (:func:`load_series`),
so an answer is as fresh as the candles whether or not the asset has caught up.

Without any precomputed chunk (the asset has not run yet) the reader builds the whole series from
the candles: the same numbers, only slower (``tests/test_analysis_similar.py`` checks both paths agree).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from bson.binary import Binary
from pymongo import ASCENDING, ReplaceOne

from dm_assets.analytics.patterns import DenseSeries, dense_closes, history_ms
from dm_assets.candles.integrity import FINDING_FLAGS
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import duration_ms as step_ms

if TYPE_CHECKING:
    from dm_resources.mongo import MongoStore

# Candles the integrity checks flagged (as the analytics read them): missing bars to the search.
SUSPECT_FLAGS = frozenset(FINDING_FLAGS)

COLLECTION = "pattern_series"
CHUNK_BARS = 43_200
PATTERN_INTERVALS: tuple[str, ...] = ("1m", "5m", "15m", "1h", "4h", "1d")


def chunk_ms(interval: str) -> int:
    return CHUNK_BARS * step_ms(interval)


def _index(store: MongoStore) -> None:
    # the same index as MongoStore.ensure_indexes creates (same name and options: no conflict)
    key = ("symbol", "interval", "start")
    store.db[COLLECTION].create_index([(k, ASCENDING) for k in key], unique=True, name="_".join(key))


def candles_series(store: MongoStore, symbol: str, interval: str, start: int, end: int) -> DenseSeries:
    """Closes of ``[start, end)`` from the candle buckets; flagged candles (bad prints, …) count as missing."""
    step = step_ms(interval)
    start -= start % step
    out = np.full(max(0, (end - start) // step), np.nan)
    for b in CandleStore(store).iter_buckets(symbol, interval, start, end):
        ot, close = b.cols["open_time"], b.cols["close"].copy()
        suspect = np.array([bool(set(f) & SUSPECT_FLAGS) for f in b.flags.values], dtype=bool)
        if suspect.any():
            close[suspect[b.flags.codes]] = np.nan
        part = dense_closes(ot, close, start, end, step)
        hit = np.isfinite(part.closes)
        out[hit] = part.closes[hit]
    return DenseSeries(symbol, start, step, out)


@dataclass(frozen=True)
class SeriesWrite:
    chunks: int
    written: int
    bars: int


def write_series(store: MongoStore, symbol: str, interval: str, as_of: int) -> SeriesWrite:
    """Rebuild the series of the search's history up to ``as_of`` and write the chunks that changed."""
    _index(store)
    step, span = step_ms(interval), chunk_ms(interval)
    end = as_of - as_of % step
    lo = end - history_ms(interval)
    lo -= lo % span
    series = candles_series(store, symbol, interval, lo, end)
    coll = store.db[COLLECTION]
    old = {
        d["_id"]: d.get("digest")
        for d in coll.find(
            {"symbol": symbol, "interval": interval, "start": {"$gte": lo, "$lt": end}}, {"_id": 1, "digest": 1}
        )
    }
    ops: list[ReplaceOne] = []
    bars = 0
    chunks = 0
    for c0 in range(lo, end, span):
        a, b = (c0 - lo) // step, min((c0 + span - lo) // step, series.n)
        closes = np.ascontiguousarray(series.closes[a:b], dtype="<f8")
        finite = int(np.isfinite(closes).sum())
        if not finite:
            continue
        chunks += 1
        bars += finite
        data = closes.tobytes()
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        doc_id = f"{symbol}:{interval}:{c0}"
        if old.get(doc_id) == digest:
            continue
        doc = {
            "_id": doc_id,
            "symbol": symbol,
            "interval": interval,
            "start": c0,
            "step": step,
            "n": int(closes.size),
            "covered_end": min(c0 + span, end),
            "closes": Binary(data),
            "digest": digest,
            "built_at": dt.datetime.now(dt.UTC),
        }
        ops.append(ReplaceOne({"_id": doc_id}, doc, upsert=True))
    if ops:
        coll.bulk_write(ops, ordered=False)
    return SeriesWrite(chunks=chunks, written=len(ops), bars=bars)


def load_series(store: MongoStore, symbol: str, interval: str, end: int) -> tuple[DenseSeries, dict[str, Any]]:
    """The search history of ``symbol`` up to ``end``: precomputed chunks plus the candles written since.

    Returns the series and where it came from (``precomputed_bars``, ``candle_bars``).
    """
    step = step_ms(interval)
    end -= end % step
    start = end - history_ms(interval)
    out = np.full((end - start) // step, np.nan)
    covered = start
    pre = 0
    docs: Iterable[dict[str, Any]] = store.db[COLLECTION].find(
        {"symbol": symbol, "interval": interval, "start": {"$gte": start - chunk_ms(interval), "$lt": end}}
    )
    for d in sorted(docs, key=lambda x: int(x["start"])):
        closes = np.frombuffer(bytes(d["closes"]), dtype="<f8")
        c0 = int(d["start"])
        idx = (c0 - start) // step + np.arange(closes.size)
        ok = (idx >= 0) & (idx < out.size)
        out[idx[ok]] = closes[ok]
        pre += int(np.isfinite(closes[ok]).sum())
        covered = max(covered, min(int(d["covered_end"]), end))
    tail = candles_series(store, symbol, interval, covered, end) if covered < end else None
    fresh = 0
    if tail is not None and tail.n:
        a = (tail.start - start) // step
        out[a : a + tail.n] = tail.closes
        fresh = int(np.isfinite(tail.closes).sum())
    return DenseSeries(symbol, start, step, out), {"precomputed_bars": pre, "candle_bars": fresh}
