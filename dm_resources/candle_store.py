"""Candles stored as buckets: one document per symbol × interval × UTC day (1d: per UTC year).

Why buckets: SecantusDB (the embedded store) pays per document. A year of 1m candles as
525,600 documents took 27–28 s to read; as 365 day documents it is one bounded index read
of 365 documents. A date × symbol partition of a candle asset *is* one bucket, replaced whole
and atomically (``replace_one`` on a deterministic ``_id``), so a reader never sees half a
partition. This is the chunking Arctic used for market data on MongoDB and what MongoDB's
time-series collections do internally.

Why binary columns (measured here, 365 day buckets of 1440 candles, SecantusDB): numeric
columns stored as BSON binary holding little-endian int64/float64 arrays read in 0.42 s and
wrote in 1.8 s (55 MB); the same values as BSON arrays of numbers read in 3.6 s and wrote in
17 s (80 MB), because every array element is a BSON element with its own type byte and
decimal-string key, decoded into a Python float. Binary columns decode with
``numpy.frombuffer`` (no per-value objects) and can be handed to a columnar response as is.
The price: ``mongosh`` shows the columns as opaque binary; this module is the reader (and
``docs/DATA_MODEL.md`` the format). ``source`` and ``flags`` are dictionary-encoded (a short
list of distinct values plus one small integer code per candle): a day has one to four sources
and almost always no flags.

Prices are float64, as every candle was before (candles are computed values; the raw
collections keep the exchange's decimal strings).

Concurrent writers: a partition write *merges* into its bucket under optimistic concurrency
(the bucket's ``v`` counter is part of the replace filter; a lost race re-reads and retries),
so two runs of the same day, or two days of one 1d year bucket, never lose each other's candles.

Every write also bumps the dataset's row in ``dataset_versions`` (``candles:SYMBOL:interval``):
the API's hot cache watches that small collection instead of probing candles per request.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from bson import Binary
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from dm_resources.contracts import CANDLE_FLOAT_FIELDS, now_ms
from dm_resources.intervals import DAY_DIVIDING_INTERVAL_MS, DAY_MS
from dm_resources.mongo import WriteResult

log = logging.getLogger(__name__)

BUCKETS = "candle_buckets"
LEGACY = "candles"
VERSIONS = "dataset_versions"
ENCODING = 1  # bump when the layout of a bucket document changes

# No market data before this: open-ended reads are bounded below here (SecantusDB scans on
# reads bounded only by symbol).
FLOOR_MS = 1_483_228_800_000  # 2017-01-01
# Open-ended reads stop a day past the wall clock: nothing is stored from the future.
FUTURE_SLACK_MS = DAY_MS

INTERVAL_MS = DAY_DIVIDING_INTERVAL_MS
YEAR_BUCKET_INTERVALS = frozenset({"1d"})

FLOAT_COLUMNS = CANDLE_FLOAT_FIELDS
INT_COLUMNS = ("open_time", "trades")
NUMERIC_COLUMNS = ("open_time", *FLOAT_COLUMNS, "trades")
CODED_COLUMNS = ("source", "flags")
# The keys of one candle row, in the order the per-candle documents had them.
ROW_FIELDS = (
    "symbol",
    "interval",
    "open_time",
    "close_time",
    *FLOAT_COLUMNS,
    "trades",
    "source",
    "flags",
)
META_FIELDS = ("symbol", "interval", "start", "end", "n", "first", "last", "v", "updated_at", "enc")


def step_ms(interval: str) -> int:
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise ValueError(f"unsupported candle interval {interval!r}; supported: {', '.join(INTERVAL_MS)}") from None


def bucket_bounds(interval: str, t_ms: int) -> tuple[int, int]:
    """``[start, end)`` of the bucket holding ``t_ms``: its UTC day, or its UTC year for 1d candles."""
    if interval in YEAR_BUCKET_INTERVALS:
        year = dt.datetime.fromtimestamp(t_ms / 1000, tz=dt.UTC).year
        lo = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
        hi = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
        return int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)
    start = int(t_ms) - int(t_ms) % DAY_MS
    return start, start + DAY_MS


def bucket_id(symbol: str, interval: str, start: int) -> str:
    """``BTCUSDT:1m:2026-03-10`` (1d: ``BTCUSDT:1d:2026``): readable, deterministic, one per partition."""
    day = dt.datetime.fromtimestamp(start / 1000, tz=dt.UTC).date()
    label = str(day.year) if interval in YEAR_BUCKET_INTERVALS else day.isoformat()
    return f"{symbol}:{interval}:{label}"


def _flag_key(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(sorted(set(value)))


@dataclass
class Bucket:
    """One bucket's candles as numpy columns, sorted by open_time, unique open times."""

    symbol: str
    interval: str
    start: int
    end: int
    cols: dict[str, np.ndarray]
    source: list[str]
    flags: list[tuple[str, ...]]
    v: int = 0

    @property
    def n(self) -> int:
        return int(self.cols["open_time"].size)

    @property
    def id(self) -> str:
        return bucket_id(self.symbol, self.interval, self.start)

    @classmethod
    def empty(cls, symbol: str, interval: str, start: int, end: int) -> Bucket:
        cols = {c: np.empty(0, dtype=np.int64 if c in INT_COLUMNS else np.float64) for c in NUMERIC_COLUMNS}
        return cls(symbol, interval, start, end, cols, [], [])

    @classmethod
    def from_rows(cls, symbol: str, interval: str, start: int, end: int, rows: Sequence[Mapping[str, Any]]) -> Bucket:
        """From per-candle rows (documents or dicts with the candle keys); later duplicates win."""
        if not rows:
            return cls.empty(symbol, interval, start, end)
        ot = np.fromiter((int(r["open_time"]) for r in rows), dtype=np.int64, count=len(rows))
        cols: dict[str, np.ndarray] = {"open_time": ot}
        for c in FLOAT_COLUMNS:
            cols[c] = np.fromiter((_float(r.get(c)) for r in rows), dtype=np.float64, count=len(rows))
        cols["trades"] = np.fromiter((int(r.get("trades") or 0) for r in rows), dtype=np.int64, count=len(rows))
        source = [str(r.get("source") or "") for r in rows]
        flags = [_flag_key(r.get("flags")) for r in rows]
        return cls(symbol, interval, start, end, cols, source, flags)._normalized()

    @classmethod
    def from_frame(cls, symbol: str, interval: str, start: int, end: int, df: pd.DataFrame) -> Bucket:
        if df.empty:
            return cls.empty(symbol, interval, start, end)
        cols = {"open_time": df["open_time"].to_numpy(dtype=np.int64)}
        for c in FLOAT_COLUMNS:
            cols[c] = df[c].to_numpy(dtype=np.float64) if c in df else np.full(len(df), np.nan)
        cols["trades"] = df["trades"].to_numpy(dtype=np.int64) if "trades" in df else np.zeros(len(df), np.int64)
        source = [str(s or "") for s in df["source"].tolist()] if "source" in df else [""] * len(df)
        flags: list[tuple[str, ...]] = [_flag_key(f) for f in df["flags"].tolist()] if "flags" in df else [()] * len(df)
        return cls(symbol, interval, start, end, cols, source, flags)._normalized()

    def _normalized(self) -> Bucket:
        """Sorted, deduplicated (the last row of an open_time wins), inside ``[start, end)``, aligned."""
        ot = self.cols["open_time"]
        step = step_ms(self.interval)
        if ot.size and np.any(ot % step):
            raise ValueError(f"{self.symbol} {self.interval}: open_time not aligned to the interval")
        if ot.size and (ot.min() < self.start or ot.max() >= self.end):
            raise ValueError(f"{self.symbol} {self.interval}: candles outside the bucket [{self.start}, {self.end})")
        # last occurrence of each open time, in ascending order
        rev = ot[::-1]
        _, idx_rev = np.unique(rev, return_index=True)
        idx = ot.size - 1 - idx_rev
        if idx.size == ot.size and np.all(np.diff(ot) > 0):
            return self
        self.cols = {c: a[idx] for c, a in self.cols.items()}
        self.source = [self.source[i] for i in idx.tolist()]
        self.flags = [self.flags[i] for i in idx.tolist()]
        return self

    def take(self, mask: np.ndarray) -> Bucket:
        idx = np.flatnonzero(mask)
        cols = {c: a[idx] for c, a in self.cols.items()}
        return Bucket(
            self.symbol,
            self.interval,
            self.start,
            self.end,
            cols,
            [self.source[i] for i in idx.tolist()],
            [self.flags[i] for i in idx.tolist()],
            self.v,
        )

    def merge(self, new: Bucket, *, replace_range: tuple[int, int] | None = None) -> tuple[Bucket, int, int]:
        """``self`` overlaid with ``new``; (merged, candles added, candles changed).

        With ``replace_range``, stored candles in that range that ``new`` does not hold are dropped
        (a partition rewrite); otherwise they are kept (a partial update).
        """
        old = self
        if replace_range is not None:
            lo, hi = replace_range
            ot = old.cols["open_time"]
            keep = (ot < lo) | (ot >= hi) | np.isin(ot, new.cols["open_time"])
            old = old.take(keep)
        old_ot, new_ot = old.cols["open_time"], new.cols["open_time"]
        present = np.isin(new_ot, old_ot)
        added = int((~present).sum())
        changed = 0
        if present.any():
            pos = np.searchsorted(old_ot, new_ot[present])
            diff = np.zeros(int(present.sum()), dtype=bool)
            for c in NUMERIC_COLUMNS:
                a, b = old.cols[c][pos], new.cols[c][present]
                diff |= ~((a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else (a == b))
            new_idx = np.flatnonzero(present).tolist()
            for j, (i_old, i_new) in enumerate(zip(pos.tolist(), new_idx, strict=True)):
                if old.source[i_old] != new.source[i_new] or old.flags[i_old] != new.flags[i_new]:
                    diff[j] = True
            changed = int(diff.sum())
        dropped = self.n - old.n
        cols = {c: np.concatenate([old.cols[c], new.cols[c]]) for c in NUMERIC_COLUMNS}
        source, flags = old.source + new.source, old.flags + new.flags
        merged = Bucket(self.symbol, self.interval, self.start, self.end, cols, source, flags, self.v)._normalized()
        return merged, added, changed + dropped

    # -- document codec -------------------------------------------------------------------
    def to_document(self, v: int) -> dict[str, Any]:
        ot = self.cols["open_time"]
        doc: dict[str, Any] = {
            "_id": self.id,
            "symbol": self.symbol,
            "interval": self.interval,
            "start": self.start,
            "end": self.end,
            "n": self.n,
            "first": int(ot[0]) if ot.size else None,
            "last": int(ot[-1]) if ot.size else None,
            "v": v,
            "updated_at": now_ms(),
            "enc": ENCODING,
        }
        for c in INT_COLUMNS:
            doc[c] = Binary(self.cols[c].astype("<i8", copy=False).tobytes())
        for c in FLOAT_COLUMNS:
            doc[c] = Binary(self.cols[c].astype("<f8", copy=False).tobytes())
        doc["source"] = _encode_codes(self.source)
        doc["flags"] = _encode_codes([list(f) for f in self.flags])
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Bucket:
        if doc.get("enc") != ENCODING:
            raise ValueError(f"bucket {doc.get('_id')}: encoding {doc.get('enc')!r}, this reader knows {ENCODING}")
        cols: dict[str, np.ndarray] = {}
        for c in INT_COLUMNS:
            cols[c] = np.frombuffer(doc[c], dtype="<i8").astype(np.int64, copy=False)
        for c in FLOAT_COLUMNS:
            cols[c] = np.frombuffer(doc[c], dtype="<f8").astype(np.float64, copy=False)
        source = [str(s) for s in _decode_codes(doc["source"])]
        flags = [tuple(f) for f in _decode_codes(doc["flags"])]
        return cls(
            doc["symbol"], doc["interval"], int(doc["start"]), int(doc["end"]), cols, source, flags, int(doc["v"])
        )

    # -- output ---------------------------------------------------------------------------
    def frame(self) -> pd.DataFrame:
        step = step_ms(self.interval)
        data: dict[str, Any] = {"open_time": self.cols["open_time"], "close_time": self.cols["open_time"] + step - 1}
        for c in FLOAT_COLUMNS:
            data[c] = self.cols[c]
        data["trades"] = self.cols["trades"]
        data["source"] = self.source
        data["flags"] = [list(f) for f in self.flags]
        return pd.DataFrame(data)

    def rows(self, fields: Sequence[str] = ROW_FIELDS) -> list[dict[str, Any]]:
        """Per-candle dicts with the keys the per-candle documents had (plus ``flags``), in ``fields`` order."""
        n = self.n
        if n == 0:
            return []
        step = step_ms(self.interval)
        columns: list[list[Any]] = []
        for f in fields:
            if f == "symbol":
                columns.append([self.symbol] * n)
            elif f == "interval":
                columns.append([self.interval] * n)
            elif f == "close_time":
                columns.append((self.cols["open_time"] + step - 1).tolist())
            elif f in self.cols:
                columns.append(self.cols[f].tolist())
            elif f == "source":
                columns.append(self.source)
            elif f == "flags":
                columns.append([list(x) for x in self.flags])
            else:
                raise KeyError(f"unknown candle field {f!r}")
        names = tuple(fields)
        return [dict(zip(names, vals, strict=True)) for vals in zip(*columns, strict=True)]


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _encode_codes(values: Sequence[Any]) -> dict[str, Any]:
    """Dictionary encoding: distinct values once, one uint16 code per candle."""
    table: list[Any] = []
    index: dict[Any, int] = {}
    codes = np.empty(len(values), dtype="<u2")
    for i, v in enumerate(values):
        key = tuple(v) if isinstance(v, list) else v
        code = index.get(key)
        if code is None:
            code = index[key] = len(table)
            table.append(v)
        codes[i] = code
    return {"values": table, "codes": Binary(codes.tobytes())}


def _decode_codes(enc: Mapping[str, Any]) -> list[Any]:
    table = list(enc["values"])
    codes = np.frombuffer(enc["codes"], dtype="<u2")
    return [table[c] for c in codes.tolist()]


def normalize_fields(projection: Mapping[str, Any] | Sequence[str] | None) -> tuple[str, ...]:
    """A MongoDB-style projection (``{"_id": 0, "open_time": 1}``) or a field list → row fields."""
    if projection is None:
        return ROW_FIELDS
    if isinstance(projection, Mapping):
        wanted = [k for k, v in projection.items() if v and k != "_id"]
    else:
        wanted = [k for k in projection if k != "_id"]
    if not wanted:
        return ROW_FIELDS
    unknown = [f for f in wanted if f not in ROW_FIELDS]
    if unknown:
        raise KeyError(f"unknown candle fields {unknown}; known: {ROW_FIELDS}")
    return tuple(wanted)


_INDEXED: set[tuple[int, str]] = set()


class ConcurrentWriteError(RuntimeError):
    """A bucket kept changing under a merge for every retry."""


@dataclass
class CandleStore:
    """The candle bucket layer over a :class:`~dm_resources.mongo.MongoStore`.

    Call sites that used ``store.read_range("candles", symbol, start, end, extra={"interval": iv})``
    use ``CandleStore(store).read_range(symbol, iv, start, end)`` and get the same rows.
    """

    store: Any  # MongoStore (Any: avoids an import cycle with typing-only users)
    max_retries: int = 8
    _indexed: bool = field(default=False, repr=False)

    @property
    def coll(self) -> Any:
        return self.store.db[BUCKETS]

    @property
    def versions(self) -> Any:
        return self.store.db[VERSIONS]

    def ensure_indexes(self) -> None:
        """Once per process and database (call sites build a CandleStore per call)."""
        key = (id(self.store.client), self.store.db_name)
        if self._indexed or key in _INDEXED:
            return
        self.coll.create_index(
            [("symbol", ASCENDING), ("interval", ASCENDING), ("start", ASCENDING)],
            unique=True,
            name="symbol_interval_start",
        )
        self.versions.create_index([("updated_at", ASCENDING)], name="updated_at")
        self._indexed = True
        _INDEXED.add(key)

    # -- writes -----------------------------------------------------------------------------
    def sync_range(
        self,
        symbol: str,
        interval: str,
        start: int,
        end: int,
        docs: Sequence[Mapping[str, Any]] | pd.DataFrame,
        *,
        replace: bool = False,
    ) -> WriteResult:
        """Make the stored candles of ``[start, end)`` hold ``docs`` (rows or a frame); one bucket write each.

        ``upserted`` counts candles that were not stored, ``modified`` those that changed (or, with
        ``replace``, were dropped because ``docs`` no longer holds them). A bucket whose candles
        are unchanged is not written at all, so a re-materialization writes nothing.
        Without ``replace`` stored candles absent from ``docs`` stay (as the per-candle ``sync_range`` did).
        A row outside ``[start, end)`` is a ``ValueError`` (it would be dropped or land outside the range).
        """
        frame = docs if isinstance(docs, pd.DataFrame) else None
        rows = None if frame is not None else list(docs)
        if (frame is not None and frame.empty and not replace) or (rows is not None and not rows and not replace):
            return WriteResult()
        ot = (
            frame["open_time"].to_numpy(dtype=np.int64)
            if frame is not None
            else np.fromiter((int(r["open_time"]) for r in rows or ()), dtype=np.int64)
        )
        if ot.size and (ot.min() < start or ot.max() >= end):  # else dropped or written outside the range
            bad = int(ot.min()) if ot.min() < start else int(ot.max())
            raise ValueError(f"{symbol} {interval}: open_time {bad} is outside the write's range [{start}, {end})")
        self.ensure_indexes()
        result = WriteResult()
        groups = self._group(symbol, interval, start, end, frame, rows)
        for b_start, b_end, new in groups:
            lo, hi = max(start, b_start), min(end, b_end)
            added, changed = self._merge_write(new, replace_range=(lo, hi) if replace else None)
            result.upserted += added
            result.modified += changed
        if result.upserted or result.modified:
            newest = max((int(g[2].cols["open_time"][-1]) for g in groups if g[2].n), default=None)
            self.bump_version(symbol, interval, newest)
        return result

    def write_day(
        self, symbol: str, interval: str, day: str | dt.date, docs: Sequence[Mapping[str, Any]] | pd.DataFrame
    ) -> WriteResult:
        """Replace one partition (a UTC day) with exactly ``docs``: the asset-owns-its-partition write."""
        d = dt.date.fromisoformat(day) if isinstance(day, str) else day
        lo = int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp() * 1000)
        return self.sync_range(symbol, interval, lo, lo + DAY_MS, docs, replace=True)

    def _group(
        self,
        symbol: str,
        interval: str,
        start: int,
        end: int,
        frame: pd.DataFrame | None,
        rows: list[Mapping[str, Any]] | None,
    ) -> list[tuple[int, int, Bucket]]:
        """The new candles split by bucket; every bucket touching ``[start, end)`` appears (maybe empty)."""
        out: list[tuple[int, int, Bucket]] = []
        t = bucket_bounds(interval, start)[0]
        while t < end:
            b_start, b_end = bucket_bounds(interval, t)
            if frame is not None:
                ot = frame["open_time"].to_numpy(dtype=np.int64) if not frame.empty else np.empty(0, np.int64)
                part = frame[(ot >= b_start) & (ot < b_end)]
                new = Bucket.from_frame(symbol, interval, b_start, b_end, part)
            else:
                assert rows is not None
                part_rows = [r for r in rows if b_start <= int(r["open_time"]) < b_end]
                new = Bucket.from_rows(symbol, interval, b_start, b_end, part_rows)
            out.append((b_start, b_end, new))
            t = b_end
        return out

    def _merge_write(self, new: Bucket, *, replace_range: tuple[int, int] | None) -> tuple[int, int]:
        """Read-merge-replace one bucket under optimistic concurrency on its ``v`` counter."""
        for _ in range(self.max_retries):
            doc = self.coll.find_one({"_id": new.id})
            old = Bucket.from_document(doc) if doc else Bucket.empty(new.symbol, new.interval, new.start, new.end)
            merged, added, changed = old.merge(new, replace_range=replace_range)
            if not added and not changed:
                return 0, 0
            body = merged.to_document(old.v + 1)
            try:
                if doc is None:
                    self.coll.insert_one(body)
                    return added, changed
                res = self.coll.replace_one({"_id": new.id, "v": old.v}, body)
            except DuplicateKeyError:  # another writer created it first: merge into theirs
                continue
            if res.matched_count == 1:
                return added, changed
        raise ConcurrentWriteError(f"{new.id}: changed by other writers {self.max_retries} times in a row")

    def bump_version(self, symbol: str, interval: str, newest: int | None) -> None:
        """Tell readers (the API cache) that this dataset changed: one tiny upsert."""
        key = f"candles:{symbol}:{interval}"
        update: dict[str, Any] = {"$inc": {"v": 1}, "$set": {"updated_at": now_ms(), "kind": "candles"}}
        if newest is not None:
            update["$max"] = {"newest": int(newest)}
        self.versions.update_one({"_id": key}, update, upsert=True)

    def delete(self, symbol: str, interval: str | None = None) -> int:
        flt: dict[str, Any] = {"symbol": symbol}
        if interval is not None:
            flt["interval"] = interval
        return int(self.coll.delete_many(flt).deleted_count)

    # -- reads ------------------------------------------------------------------------------
    def _bucket_filter(self, symbol: str, interval: str, start: int | None, end: int | None) -> dict[str, Any]:
        lo = bucket_bounds(interval, max(int(start), FLOOR_MS) if start is not None else FLOOR_MS)[0]
        hi = int(end) if end is not None else now_ms() + FUTURE_SLACK_MS
        return {"symbol": symbol, "interval": interval, "start": {"$gte": lo, "$lt": hi}}

    def iter_documents(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        *,
        raw: bool = False,
        batch_size: int = 16,
    ) -> Iterator[Any]:
        """Bucket documents touching ``[start, end)``, ascending by bucket start (bounded index read).

        ``raw`` yields raw BSON batches (for callers that decode themselves).
        """
        flt = self._bucket_filter(symbol, interval, start, end)
        finder = self.coll.find_raw_batches if raw else self.coll.find
        cur = finder(flt, batch_size=batch_size)
        if not _is_secantus(self.store):  # SecantusDB's forward IXSCAN is already in index order
            cur = cur.sort([("symbol", ASCENDING), ("interval", ASCENDING), ("start", ASCENDING)])
        try:
            yield from cur
        finally:
            cur.close()

    def iter_buckets(
        self, symbol: str, interval: str, start: int | None = None, end: int | None = None
    ) -> Iterator[Bucket]:
        """Buckets trimmed to ``[start, end)``, ascending; empty ones skipped. Streams: one bucket in memory.

        Order comes from the index (MongoDB: ``sort`` served by it; SecantusDB: its forward IXSCAN,
        see ``iter_documents``); ``test_candle_store`` writes buckets out of order and reads them back.
        """
        lo = start if start is not None else FLOOR_MS
        hi = end if end is not None else None
        for doc in self.iter_documents(symbol, interval, start, end):
            b = Bucket.from_document(doc)
            ot = b.cols["open_time"]
            if b.n and (ot[0] < lo or (hi is not None and ot[-1] >= hi)):
                b = b.take((ot >= lo) & (ot < hi if hi is not None else True))
            if b.n:
                yield b

    def read_range(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        *,
        projection: Mapping[str, Any] | Sequence[str] | None = None,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """Candle rows with ``start <= open_time < end``, ascending: the per-candle documents' keys, no ``_id``."""
        fields = normalize_fields(projection)
        out: list[dict[str, Any]] = []
        for b in self.iter_buckets(symbol, interval, start, end):
            out.extend(b.rows(fields))
            if limit and len(out) >= limit:
                return out[:limit]
        return out

    read = read_range

    def read_frame(self, symbol: str, interval: str, start: int | None = None, end: int | None = None) -> pd.DataFrame:
        """The candle frame (``open_time``, ``close_time``, OHLC, volumes, trades, source, flags), sorted."""
        frames = [b.frame() for b in self.iter_buckets(symbol, interval, start, end)]
        if not frames:
            return Bucket.empty(symbol, interval, 0, 0).frame()
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def has(self, symbol: str, interval: str, open_time: int) -> bool:
        rows = self.read_range(symbol, interval, open_time, open_time + 1, projection=["open_time"])
        return bool(rows)

    def _meta(self, symbol: str, interval: str, start: int | None, end: int | None) -> list[dict[str, Any]]:
        """Bucket metadata only (n, first, last) — no columns — ascending."""
        proj = {f: 1 for f in ("start", "n", "first", "last")}
        flt = self._bucket_filter(symbol, interval, start, end)
        return sorted(self.coll.find(flt, proj), key=lambda d: d["start"])  # small: metadata only

    def count(self, symbol: str, interval: str, start: int | None = None, end: int | None = None) -> int:
        """Candles in ``[start, end)``: summed bucket sizes; only partly covered buckets are decoded."""
        total = 0
        lo = start if start is not None else FLOOR_MS
        for m in self._meta(symbol, interval, start, end):
            if not m.get("n"):
                continue
            if m["first"] >= lo and (end is None or m["last"] < end):
                total += int(m["n"])
            else:
                hi = min(end, m["last"] + 1) if end is not None else m["last"] + 1
                total += len(self.read_range(symbol, interval, max(lo, m["start"]), hi, projection=["open_time"]))
        return total

    def first_time(self, symbol: str, interval: str) -> int | None:
        for m in self._meta(symbol, interval, None, None):
            if m.get("n"):
                return int(m["first"])
        return None

    def last_time(self, symbol: str, interval: str, *, before: int | None = None) -> int | None:
        """Newest open_time (before ``before`` when given) from bucket metadata, newest bucket first."""
        metas = self._meta(symbol, interval, None, before)
        for m in reversed(metas):
            if not m.get("n"):
                continue
            if before is None or m["last"] < before:
                return int(m["last"])
            rows = self.read_range(symbol, interval, m["start"], before, projection=["open_time"])
            if rows:
                return int(rows[-1]["open_time"])
        return None

    def latest(
        self,
        symbol: str,
        interval: str,
        n: int = 1,
        *,
        end: int | None = None,
        projection: Mapping[str, Any] | Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The newest ``n`` candles before ``end`` (default: all), oldest first.

        Gallops back in whole buckets (1, 4, 16, … bucket spans) with bounded ascending reads.
        """
        if n <= 0:
            return []
        hi = end if end is not None else now_ms() + FUTURE_SLACK_MS
        span = bucket_bounds(interval, hi)[1] - bucket_bounds(interval, hi)[0]
        window = max(span, n * step_ms(interval))
        while True:
            lo = max(FLOOR_MS, hi - window)
            rows = self.read_range(symbol, interval, lo, end, projection=projection)
            if len(rows) >= n or lo <= FLOOR_MS:
                return rows[-n:]
            window *= 4

    def symbols(self) -> list[str]:
        return sorted(s for s in self.coll.distinct("symbol") if isinstance(s, str))

    def versions_since(self, since_ms: int) -> list[dict[str, Any]]:
        """Dataset version rows updated at or after ``since_ms`` (bounded read on the updated_at index)."""
        return list(self.versions.find({"updated_at": {"$gte": int(since_ms)}}))


_SECANTUS: dict[int, bool] = {}


def _is_secantus(store: Any) -> bool:
    key = id(store.client)
    known = _SECANTUS.get(key)
    if known is None:
        known = _SECANTUS[key] = "secantusVersion" in store.client.server_info()
    return known


def bump_analytics_versions(store: Any, docs: Iterable[Mapping[str, Any]]) -> int:
    """After an analytics write: bump ``analytics:SYMBOL:kind:interval`` for every dataset written.

    The analytics assets call this so the API cache drops their entries by notification, as it
    does for candles. One small upsert per dataset, not per document.
    """
    newest: dict[str, int] = {}
    for d in docs:
        key = f"analytics:{d['symbol']}:{d['kind']}:{d['interval']}"
        newest[key] = max(newest.get(key, 0), int(d.get("window_end") or 0))
    coll = store.db[VERSIONS]
    for key, t in newest.items():
        update = {"$inc": {"v": 1}, "$set": {"updated_at": now_ms(), "kind": "analytics"}, "$max": {"newest": t}}
        coll.update_one({"_id": key}, update, upsert=True)
    return len(newest)


# -- migration ---------------------------------------------------------------------------------
@dataclass
class MigrationReport:
    datasets: int = 0
    legacy_candles: int = 0
    buckets_written: int = 0
    candles_added: int = 0
    dropped_legacy: bool = False
    per_dataset: dict[str, int] = field(default_factory=dict)


def migrate(
    store: Any,
    *,
    symbols: Iterable[str] | None = None,
    intervals: Iterable[str] = tuple(INTERVAL_MS),
    window_days: int = 31,
    drop_legacy: bool = False,
    now: int | None = None,
) -> MigrationReport:
    """Per-candle documents in ``candles`` → buckets in ``candle_buckets``; idempotent.

    Legacy candles only *fill* open times a bucket does not hold yet: a bucket written by the
    new code after the upgrade is newer than the legacy copy and wins. A second run therefore
    finds nothing to add and writes nothing. Reads are bounded ascending windows per
    symbol × interval. ``drop_legacy`` drops ``candles`` when this run migrated all of it, else
    deletes only the legacy candles it migrated (see ``_drop_migrated``).
    """
    cs = CandleStore(store)
    cs.ensure_indexes()
    legacy = store.db[LEGACY]
    report = MigrationReport()
    found = symbols if symbols is not None else (s for s in legacy.distinct("symbol") if isinstance(s, str))
    syms = sorted(found)
    hi_all = (now if now is not None else now_ms()) + FUTURE_SLACK_MS
    wanted = set(intervals)
    for sym in syms:
        present = sorted(i for i in legacy.distinct("interval", {"symbol": sym}) if i in wanted)
        for iv in present:
            lo = bucket_bounds(iv, FLOOR_MS)[0]
            report.datasets += 1
            added_ds = 0
            while lo < hi_all:
                hi = min(hi_all, lo + window_days * DAY_MS)
                docs = list(
                    legacy.find(
                        {"symbol": sym, "interval": iv, "open_time": {"$gte": lo, "$lt": hi}},
                        {"_id": 0},
                        batch_size=10_000,
                    )
                )
                report.legacy_candles += len(docs)
                if docs:
                    for b_start, _b_end, new in cs._group(sym, iv, lo, hi, None, docs):
                        if not new.n:
                            continue
                        stored = cs.read_range(sym, iv, b_start, _b_end, projection=["open_time"])
                        have = np.array([r["open_time"] for r in stored], dtype=np.int64)
                        missing = new.take(~np.isin(new.cols["open_time"], have))
                        if missing.n:
                            added, _ = cs._merge_write(missing, replace_range=None)
                            added_ds += added
                            report.buckets_written += 1
                lo = hi
            if added_ds:
                cs.bump_version(sym, iv, None)
            report.candles_added += added_ds
            report.per_dataset[f"{sym}:{iv}"] = added_ds
    if drop_legacy:
        _drop_migrated(legacy, [(s, iv) for s in syms for iv in wanted], FLOOR_MS, hi_all, whole=symbols is None)
        report.dropped_legacy = LEGACY not in store.db.list_collection_names()
    return report


def _drop_migrated(legacy: Any, datasets: Sequence[tuple[str, str]], lo: int, hi: int, *, whole: bool) -> None:
    """Drop the legacy collection when this run migrated all of it; else delete only what it migrated.

    A run restricted to some symbols or intervals (or legacy candles outside ``[lo, hi)``, which the
    migration does not read) must not take the other datasets' candles with it.
    """
    outside = legacy.find_one({"$or": [{"open_time": {"$lt": lo}}, {"open_time": {"$gte": hi}}]}, {"_id": 1})
    if whole and outside is None and {i for i in legacy.distinct("interval")} <= {iv for _, iv in datasets}:
        legacy.drop()
        return
    for sym, iv in datasets:
        legacy.delete_many({"symbol": sym, "interval": iv, "open_time": {"$gte": lo, "$lt": hi}})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dm_resources.candle_store migrate [--drop-legacy]``: convert a store, print a JSON report."""
    import json

    from dm_resources.mongo import MongoStore
    from dm_resources.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m dm_resources.candle_store", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    mig = sub.add_parser("migrate", help="per-candle `candles` documents → day buckets (idempotent)")
    mig.add_argument("--mongo-url", default=None)
    mig.add_argument("--db", default=None)
    mig.add_argument("--symbol", action="append", help="only these symbols (repeatable); default: all")
    mig.add_argument("--drop-legacy", action="store_true", help="drop the per-candle `candles` collection afterwards")
    args = parser.parse_args(argv)
    settings = get_settings()
    store = MongoStore(args.mongo_url or settings.mongo_url, args.db or settings.mongo_db)
    try:
        t0 = time.perf_counter()
        rep = migrate(store, symbols=args.symbol, drop_legacy=args.drop_legacy)
        out = {**rep.__dict__, "seconds": round(time.perf_counter() - t0, 2)}
        print(json.dumps(out, indent=2))
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
