"""``CandleStore``: the candle bucket layer over a ``MongoStore`` — the only reader and writer of buckets.

Concurrent writers: a partition write *merges* into its bucket under optimistic concurrency
(the bucket's ``v`` counter is part of the replace filter; a lost race backs off with jitter,
re-reads and retries), so two runs of the same day, or the day partitions of one 1d year
bucket, never lose each other's candles.

Every write also bumps the dataset's row in ``dataset_versions`` (``candles:SYMBOL:interval``):
the API's hot cache watches that small collection instead of probing candles per request.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import bson
import numpy as np
import pandas as pd
from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError
from tenacity import wait_random_exponential

from dm_resources.candle_store.bucket import Bucket, normalize_fields
from dm_resources.candle_store.codec import decode_bucket, decode_span, encode_bucket
from dm_resources.candle_store.layout import bucket_bounds, bucket_starts, step_ms
from dm_resources.candle_store.versions import bump_candle_version, versions_since
from dm_resources.contracts import FLOOR_MS, FUTURE_SLACK_MS, now_ms
from dm_resources.intervals import DAY_MS
from dm_resources.mongo import (
    CANDLE_BUCKETS,
    DATASET_VERSIONS,
    LAYER_INDEXES,
    TRANSIENT_ERRORS,
    MongoStore,
    WriteResult,
    mongo_retry,
)

BUCKETS = CANDLE_BUCKETS

_INDEXED: set[tuple[int, str]] = set()
# Between lost races of one bucket: random in [0, min(1 s, 10 ms × 2^attempt)] ("full jitter").
WRITE_BACKOFF = wait_random_exponential(multiplier=0.01, max=1.0)


@dataclass
class _WriteAttempt:
    """What the attempts of one bucket write learned: whether a write may have landed unseen."""

    maybe_written: bool = False
    lost_answer: bool = False


class ConcurrentWriteError(RuntimeError):
    """A bucket kept changing under a merge for every retry."""


@dataclass
class CandleStore:
    """The candle bucket layer over a :class:`~dm_resources.mongo.MongoStore`.

    ``read_range`` returns rows with the keys of one candle (``ROW_FIELDS``), whatever the bucket
    layout underneath; ``iter_spans`` is the columnar bulk read.
    """

    store: MongoStore
    max_retries: int = 12
    _indexed: bool = field(default=False, repr=False)

    @property
    def coll(self) -> Any:
        return self.store.db[BUCKETS]

    @property
    def versions(self) -> Any:
        return self.store.db[DATASET_VERSIONS]

    def ensure_indexes(self) -> None:
        """Once per process and database (call sites build a CandleStore per call)."""
        key = (id(self.store.client), self.store.db_name)
        if self._indexed or key in _INDEXED:
            return
        for ix in LAYER_INDEXES:
            self.store.db[ix.collection].create_index([(k, ASCENDING) for k in ix.keys], unique=ix.unique, name=ix.name)
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
        if ot.size and ot.min() < FLOOR_MS:  # reads never look below the floor: it would be stored unseen
            raise ValueError(f"{symbol} {interval}: open_time {int(ot.min())} is before {FLOOR_MS} (2010-01-01)")
        self.ensure_indexes()
        result = WriteResult()
        groups = self._group(symbol, interval, start, end, frame, rows)
        written: list[Bucket] = []
        try:
            for b_start, b_end, new in groups:
                lo, hi = max(start, b_start), min(end, b_end)
                added, changed, maybe = self._write_bucket(new, replace_range=(lo, hi) if replace else None)
                result.upserted += added
                result.modified += changed
                if added or changed or maybe:
                    written.append(new)
        finally:  # a later bucket's failure must not hide the buckets already written from the cache
            if written:
                newest = max((int(b.cols["open_time"][-1]) for b in written if b.n), default=None)
                self.bump_version(symbol, interval, newest)
        return result

    def sync_ranges(
        self, symbol: str, interval: str, parts: Sequence[tuple[int, int, pd.DataFrame]], *, replace: bool = False
    ) -> list[WriteResult]:
        """Several :meth:`sync_range` writes of one dataset (a run's many days) in a few round trips.

        One read of every bucket the parts touch, one ``insert_many`` of the buckets that do not
        exist yet (history), a conditional replace per changed bucket; a bucket that another writer
        created or changed meanwhile is written again alone by :meth:`sync_range`'s merge loop, so
        the optimistic concurrency of a single write holds. One version bump for all. Returns one
        result per part, as :meth:`sync_range` would have.
        """
        results = [WriteResult() for _ in parts]
        plan: dict[str, list[tuple[int, Bucket, tuple[int, int] | None]]] = {}
        for i, (start, end, frame) in enumerate(parts):
            ot = frame["open_time"].to_numpy(dtype=np.int64) if not frame.empty else np.empty(0, np.int64)
            if ot.size and (ot.min() < start or ot.max() >= end or ot.min() < FLOOR_MS):
                raise ValueError(f"{symbol} {interval}: open_time outside the write's range [{start}, {end})")
            if frame.empty and not replace:
                continue
            for b_start, b_end, new in self._group(symbol, interval, start, end, frame, None):
                rr = (max(start, b_start), min(end, b_end)) if replace else None
                plan.setdefault(new.id, []).append((i, new, rr))
        if not plan:
            return results
        self.ensure_indexes()
        existing = {d["_id"]: d for d in self._find_ids(sorted(plan))}
        inserts: dict[str, tuple[Bucket, list[tuple[int, int, int]]]] = {}
        alone: list[str] = []
        written: list[Bucket] = []
        for bid, items in plan.items():
            doc = existing.get(bid)
            first = items[0][1]
            old = decode_bucket(doc) if doc else Bucket.empty(first.symbol, first.interval, first.start, first.end)
            cur, counts = old, []
            for i, new, rr in items:
                cur, added, changed = cur.merge(new, replace_range=rr)
                counts.append((i, added, changed))
            if not any(a or c for _, a, c in counts):
                continue
            if doc is None:
                inserts[bid] = (cur, counts)
                continue
            res = self.coll.replace_one({"_id": bid, "v": old.v}, encode_bucket(cur, old.v + 1))
            if res.matched_count == 1:
                self._count(results, counts)
                written.append(cur)
            else:
                alone.append(bid)
        if inserts:
            try:
                self.coll.insert_many([encode_bucket(b, 1) for b, _ in inserts.values()], ordered=False)
                done = set(inserts)
            except BulkWriteError as exc:  # another writer created some first: those go alone
                done = set(inserts) - {e.get("op", {}).get("_id") for e in exc.details.get("writeErrors", [])}
            except TRANSIENT_ERRORS:  # no answer: whatever landed, the merge loop finds and keeps
                done = set()
            for bid, (bucket, counts) in inserts.items():
                if bid in done:
                    self._count(results, counts)
                    written.append(bucket)
                else:
                    alone.append(bid)
        try:
            for bid in alone:  # lost a race, or the batch did not answer: the one-bucket merge loop decides
                for i, new, rr in plan[bid]:
                    added, changed, maybe = self._write_bucket(new, replace_range=rr)
                    results[i].upserted += added
                    results[i].modified += changed
                    if added or changed or maybe:
                        written.append(new)
        finally:
            if written:
                newest = max((int(b.cols["open_time"][-1]) for b in written if b.n), default=None)
                self.bump_version(symbol, interval, newest)
        return results

    @staticmethod
    def _count(results: list[WriteResult], counts: list[tuple[int, int, int]]) -> None:
        for i, added, changed in counts:
            results[i].upserted += added
            results[i].modified += changed

    @mongo_retry(attempts="max_retries")
    def _find_ids(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        return list(self.coll.find({"_id": {"$in": list(ids)}}))

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
        for b_start, b_end in bucket_starts(interval, start, end):
            if frame is not None:
                ot = frame["open_time"].to_numpy(dtype=np.int64) if not frame.empty else np.empty(0, np.int64)
                part = frame[(ot >= b_start) & (ot < b_end)]
                new = Bucket.from_frame(symbol, interval, b_start, b_end, part)
            else:
                assert rows is not None
                part_rows = [r for r in rows if b_start <= int(r["open_time"]) < b_end]
                new = Bucket.from_rows(symbol, interval, b_start, b_end, part_rows)
            out.append((b_start, b_end, new))
        return out

    def _write_bucket(self, new: Bucket, *, replace_range: tuple[int, int] | None) -> tuple[int, int, bool]:
        """(candles added, candles changed, whether a write may have landed although both are 0)."""
        attempt = _WriteAttempt()
        added, changed = self._merge_write(new, replace_range=replace_range, attempt=attempt)
        return added, changed, attempt.maybe_written

    @mongo_retry(on=(ConcurrentWriteError, *TRANSIENT_ERRORS), attempts="max_retries", wait=WRITE_BACKOFF)
    def _merge_write(
        self, new: Bucket, *, replace_range: tuple[int, int] | None, attempt: _WriteAttempt
    ) -> tuple[int, int]:
        """Read-merge-replace one bucket under optimistic concurrency on its ``v`` counter.

        A lost race (the bucket changed between the read and the replace, or another writer
        created it first) is a ``ConcurrentWriteError``, and a dropped connection a transient
        error: the decorator waits (exponential backoff with full jitter, so writers that
        collided spread out instead of colliding again) and re-reads and merges again.
        """
        doc = self.coll.find_one({"_id": new.id})
        old = decode_bucket(doc) if doc else Bucket.empty(new.symbol, new.interval, new.start, new.end)
        merged, added, changed = old.merge(new, replace_range=replace_range)
        if not added and not changed:
            return 0, 0
        body = encode_bucket(merged, old.v + 1)
        lost = f"{new.id}: changed by other writers {self.max_retries} times in a row"
        try:
            attempt.maybe_written = True  # until the server answers: a lost answer may hide a write
            if doc is None:
                self.coll.insert_one(body)
                return added, changed
            res = self.coll.replace_one({"_id": new.id, "v": old.v}, body)
        except DuplicateKeyError as exc:  # another writer created it first: merge into theirs
            attempt.maybe_written = attempt.lost_answer
            raise ConcurrentWriteError(lost) from exc
        except TRANSIENT_ERRORS:
            attempt.lost_answer = True
            raise
        if res.matched_count != 1:
            attempt.maybe_written = attempt.lost_answer
            raise ConcurrentWriteError(lost)
        return added, changed

    def bump_version(self, symbol: str, interval: str, newest: int | None) -> None:
        """Tell readers (the API cache) that this dataset changed: one tiny upsert."""
        bump_candle_version(self.store.db, symbol, interval, newest)

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
        for doc in self.iter_documents(symbol, interval, start, end):
            b = _trimmed(decode_bucket(doc), start, end)
            if b.n:
                yield b

    def iter_spans(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        *,
        rows: int = 1 << 16,
        batch_size: int = 64,
    ) -> Iterator[Bucket]:
        """The bulk read: consecutive buckets decoded together, as spans of at least ``rows`` candles.

        Same candles as :meth:`iter_buckets`, fewer and larger pieces: a span decodes its day
        buckets as one array (``codec.decode_span``), and a helper thread fetches the next batch
        of documents from the server while this one decodes, so the server's work and ours overlap.
        """
        opts = self.coll.codec_options
        pending: list[Mapping[str, Any]] = []
        count = 0
        batches = self.iter_documents(symbol, interval, start, end, raw=True, batch_size=batch_size)
        for batch in read_ahead(batches):
            for doc in bson.decode_all(batch, opts):
                if not doc.get("n"):
                    continue
                pending.append(doc)
                count += int(doc["n"])
                if count >= rows:
                    b = _trimmed(decode_span(pending), start, end)
                    pending, count = [], 0
                    if b.n:
                        yield b
        if pending:
            b = _trimmed(decode_span(pending), start, end)
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
        frames = [b.frame() for b in self.iter_spans(symbol, interval, start, end)]
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
        return versions_since(self.store.db, since_ms)


def _trimmed(b: Bucket, start: int | None, end: int | None) -> Bucket:
    """``b`` without the candles outside ``[start, end)``."""
    lo = start if start is not None else FLOOR_MS
    ot = b.cols["open_time"]
    if b.n and (ot[0] < lo or (end is not None and ot[-1] >= end)):
        return b.take((ot >= lo) & (ot < end if end is not None else True))
    return b


T = TypeVar("T")


def read_ahead(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """``items``, produced by a helper thread up to ``depth`` ahead of the caller.

    The helper owns ``items`` (a cursor is used by one thread at a time) and closes it when
    it ends, fails, or when the caller stops early (a client that disconnects mid-stream);
    the caller then waits for at most the one fetch in flight.
    """
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the caller, raised there
            put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    helper = threading.Thread(target=produce, name="candle-read-ahead", daemon=True)
    helper.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        helper.join()


_SECANTUS: dict[int, bool] = {}


def _is_secantus(store: Any) -> bool:
    key = id(store.client)
    known = _SECANTUS.get(key)
    if known is None:
        known = _SECANTUS[key] = "secantusVersion" in store.client.server_info()
    return known
