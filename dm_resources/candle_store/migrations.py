"""Migrations of stored candles: legacy per-candle documents into buckets, old bucket encodings into the current one.

Both are idempotent and resumable: what is done is read from the data itself, never from a
progress record that could disagree with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson
import numpy as np

from dm_resources.candle_store.codec import ENCODING, decode_bucket, encode_bucket
from dm_resources.candle_store.layout import INTERVAL_MS, bucket_bounds
from dm_resources.candle_store.store import CandleStore
from dm_resources.contracts import FLOOR_MS, FUTURE_SLACK_MS, now_ms
from dm_resources.intervals import DAY_MS
from dm_resources.mongo import MongoStore, mongo_retry

LEGACY = "candles"


@dataclass
class MigrationReport:
    datasets: int = 0
    legacy_candles: int = 0
    buckets_written: int = 0
    candles_added: int = 0
    dropped_legacy: bool = False
    per_dataset: dict[str, int] = field(default_factory=dict)


def migrate(
    store: MongoStore,
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
                            added, _, _ = cs._write_bucket(missing, replace_range=None)
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


# -- re-encoding: old bucket layouts → the current one ----------------------------------------------
@dataclass
class ReencodeReport:
    buckets_seen: int = 0
    converted: int = 0
    already_current: int = 0
    # rewritten by a writer between our read and our replace: writers write the current encoding
    changed_meanwhile: int = 0
    bytes_before: int = 0  # BSON size of the converted buckets, old layout
    bytes_after: int = 0  # ... and new layout
    complete: bool = False  # a whole pass found nothing left to convert (not stopped by ``limit``)
    per_dataset: dict[str, int] = field(default_factory=dict)


def reencode(
    store: MongoStore,
    *,
    symbols: Iterable[str] | None = None,
    intervals: Iterable[str] = tuple(INTERVAL_MS),
    limit: int | None = None,
) -> ReencodeReport:
    """Rewrite every bucket stored in an older encoding in the current one; idempotent and resumable.

    The state is in the buckets themselves (``enc``), and each bucket is converted by one
    ``replace_one`` filtered on its ``_id``, ``v`` and old ``enc``: a run stopped at any point
    (a crash, ``limit``) leaves every bucket either old or new, never half, and the next run
    converts what is left. A bucket a writer changed meanwhile is not overwritten: that writer
    already stored the current encoding. The candles do not change, so neither do ``v``,
    ``updated_at`` or the dataset versions (no cache is invalidated). Readers understand both
    encodings throughout, so the API serves while this runs.
    """
    cs = CandleStore(store)
    cs.ensure_indexes()
    report = ReencodeReport()
    syms = sorted(symbols) if symbols is not None else cs.symbols()
    for sym in syms:
        for iv in intervals:
            metas = list(cs.coll.find(cs._bucket_filter(sym, iv, None, None), {"enc": 1, "v": 1}))
            stale = [m for m in metas if m.get("enc") != ENCODING]
            report.buckets_seen += len(metas)
            report.already_current += len(metas) - len(stale)
            done = 0
            for meta in stale:
                if limit is not None and report.converted >= limit:
                    return report
                outcome = _reencode_one(store, cs.coll, meta["_id"], report)
                done += outcome
            if done:
                report.per_dataset[f"{sym}:{iv}"] = done
    report.complete = True
    return report


@mongo_retry()
def _reencode_one(store: MongoStore, coll: Any, bucket_id: str, report: ReencodeReport) -> int:
    """Convert one bucket; 1 when this call converted it (``store`` gives the retry policy its attempts)."""
    doc = coll.find_one({"_id": bucket_id})
    if doc is None or doc.get("enc") == ENCODING:
        report.changed_meanwhile += 1
        return 0
    body = encode_bucket(decode_bucket(doc), int(doc["v"]))
    body["updated_at"] = doc.get("updated_at", body["updated_at"])
    res = coll.replace_one({"_id": bucket_id, "v": doc["v"], "enc": doc["enc"]}, body)
    if res.matched_count != 1:
        report.changed_meanwhile += 1
        return 0
    report.converted += 1
    report.bytes_before += len(bson.encode(doc))
    report.bytes_after += len(bson.encode(body))
    return 1
