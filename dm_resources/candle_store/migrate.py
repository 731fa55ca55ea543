"""Per-candle legacy documents (``candles``) into buckets: an idempotent, bounded migration."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dm_resources.candle_store.layout import FLOOR_MS, FUTURE_SLACK_MS, INTERVAL_MS, bucket_bounds
from dm_resources.candle_store.store import CandleStore
from dm_resources.contracts import now_ms
from dm_resources.intervals import DAY_MS
from dm_resources.mongo import MongoStore

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
