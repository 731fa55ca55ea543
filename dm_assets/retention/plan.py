"""Retention of the high-volume collections: what may be deleted, as plain functions.

Why a scheduled Dagster job and not a TTL index:

* A TTL index needs a BSON ``Date`` field; every time here is int64 epoch ms (the exchange's
  unit, exact and cheap to compare). A TTL index would mean a second time field on every raw
  document, written by the ingest service, for the sole purpose of expiry.
* A TTL index deletes by age alone. It cannot know that the 1m candles of a day have not been
  built yet (a backfill queued, a run failed, the gap sensor still asking the exchange), and
  deleting that day's trades would turn a pending partition into a permanent hole. The job
  asks Dagster for each day's partition status and keeps every day whose consuming partition
  is not materialized.
* The job is visible (a materialization per run with what it deleted and what it kept and why),
  can be paused from the UI, runs in dry-run mode, and is tested; the TTL monitor is none of
  that (and the embedded SecantusDB does not promise to run one).

Deletion works in whole UTC days, oldest first, with ascending range deletes on the
``(symbol, time)`` index: ``[day start, day end)`` per contiguous run of deletable days.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dm_assets.partitions import DAY_MS, day_bounds_ms
from dm_resources.retention import CONSUMERS as RETENTION_CONSUMERS
from dm_resources.retention import retention_table as _retention_table

if TYPE_CHECKING:
    from dm_resources.mongo import MongoStore
    from dm_resources.settings import Settings


@dataclass(frozen=True)
class Policy:
    """One collection's retention: ``days`` (0 = keep forever) and the partitioned asset that reads it by day."""

    collection: str
    days: int
    consumer: str | None  # asset key path ("candles/candles_1m") whose date × symbol partitions read this data
    reason: str


CONSUMERS = RETENTION_CONSUMERS


def policies(settings: Settings) -> list[Policy]:
    from dm_resources.settings import RETENTION_WHY

    out = []
    for name, consumer in CONSUMERS.items():
        days = settings.retention_days(name)
        assert days is not None, f"no DM_RETENTION_{name.upper()}_DAYS setting"
        out.append(Policy(name, days, consumer, RETENTION_WHY[name]))
    return out


def cutoff_ms(now_ms: int, days: int) -> int:
    """Start of the UTC day ``days`` days before ``now``: whole days before it are past retention."""
    return (now_ms - days * DAY_MS) // DAY_MS * DAY_MS


def days_before(first: dt.date, cutoff: int) -> list[str]:
    """UTC days from ``first`` whose end is at or before ``cutoff``."""
    out = []
    d = first
    while day_bounds_ms(d)[1] <= cutoff:
        out.append(d.isoformat())
        d += dt.timedelta(days=1)
    return out


def plan_days(days: Sequence[str], deletable: Mapping[str, bool]) -> tuple[list[tuple[int, int]], list[str]]:
    """(contiguous ``[start, end)`` ranges of deletable days, days kept because their partition is pending)."""
    ranges: list[tuple[int, int]] = []
    kept: list[str] = []
    for day in days:
        if not deletable.get(day, False):
            kept.append(day)
            continue
        a, b = day_bounds_ms(day)
        if ranges and ranges[-1][1] == a:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
    return ranges, kept


@dataclass
class CollectionReport:
    collection: str
    days: int
    cutoff: int | None = None
    deleted: int = 0
    ranges: int = 0
    kept_pending: dict[str, list[str]] = field(default_factory=dict)  # symbol → days kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "retention_days": self.days,
            "cutoff": self.cutoff,
            "deleted": self.deleted,
            "delete_ranges": self.ranges,
            "kept_pending": {s: d[:20] for s, d in self.kept_pending.items()},
            "kept_pending_days": sum(len(d) for d in self.kept_pending.values()),
        }


# status(consumer asset path, symbol, days) → {day: deletable}
StatusLookup = Callable[[str, str, Sequence[str]], Mapping[str, bool]]


def apply_retention(
    store: MongoStore,
    pols: Iterable[Policy],
    symbols: Iterable[str],
    now_ms: int,
    first_day: dt.date,
    status: StatusLookup,
    *,
    dry_run: bool = False,
) -> list[CollectionReport]:
    """Delete whole days past each policy's retention whose consuming partition is materialized."""
    from dm_resources.mongo import COLLECTIONS

    reports = []
    syms = sorted(set(symbols))
    for pol in pols:
        rep = CollectionReport(pol.collection, pol.days)
        reports.append(rep)
        if pol.days <= 0:
            continue
        cut = cutoff_ms(now_ms, pol.days)
        rep.cutoff = cut
        tf = COLLECTIONS[pol.collection].time_field
        coll = store.collection(pol.collection)
        targets = [*syms, "*"] if pol.collection == "analytics" else syms
        for sym in targets:
            if pol.consumer is None:
                ranges: list[tuple[int | None, int]] = [(None, cut)]
            else:
                first_ms = day_bounds_ms(first_day)[0]
                days = days_before(first_day, cut)
                planned, kept = plan_days(days, status(pol.consumer, sym, days))
                # Report only pending days that hold data (one indexed range probe each).
                kept = [d for d in kept if _has_data(coll, sym, tf, d)]
                if kept:
                    rep.kept_pending[sym] = kept
                # Before the first partition no partition can be pending: nothing reads it.
                ranges = [(None, min(first_ms, cut)), *planned]
            for a, b in ranges:
                window: dict[str, int] = {"$lt": b}
                if a is not None:
                    window["$gte"] = a
                flt = {"symbol": sym, tf: window}
                rep.ranges += 1
                if dry_run:
                    rep.deleted += coll.count_documents(flt)
                else:
                    rep.deleted += coll.delete_many(flt).deleted_count
    return reports


def _has_data(coll: Any, symbol: str, tf: str, day: str) -> bool:
    a, b = day_bounds_ms(day)
    return coll.find_one({"symbol": symbol, tf: {"$gte": a, "$lt": b}}, {"_id": 1}) is not None


retention_table = _retention_table
