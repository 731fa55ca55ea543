"""Which date × symbol partitions have holes or unrepaired suspect minutes, and whether asking again can help.

Used by the gap sensor; plain functions over the stores so they are tested without Dagster.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dm_assets.candles.build import MINUTE_MS, expected_minutes
from dm_assets.candles.integrity import FINDING_FLAGS, FLAG_VERIFIED
from dm_assets.partitions import day_bounds_ms
from dm_resources.candle_store import CandleStore

if TYPE_CHECKING:
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore

# Today's newest minutes are the audit schedule's job (it refreshes today every 5 minutes);
# the gap sensor only asks for minutes older than that, or it would request a run for
# today on every tick just because time moved on.
ARRIVAL_GRACE_MS = 10 * MINUTE_MS


@dataclass(frozen=True)
class PartitionGap:
    day: str
    symbol: str
    missing: int  # minutes neither stored nor confirmed missing
    attempts: int  # fill attempts already made for those minutes (changes the run key)
    higher_missing: bool  # 1m complete but the day's 1d candle not derived yet
    suspect: int = 0  # flagged minutes (bad print, impossible OHLC, disagreement) not yet re-checked with REST

    @property
    def partition_key(self) -> str:
        return f"{self.day}|{self.symbol}"

    def run_key(self, missing_times: tuple[int, ...] = ()) -> str:
        """Stable for the same hole and attempt count, so a tick that sees nothing new asks nothing new."""
        digest = hashlib.sha1(repr(missing_times).encode()).hexdigest()[:10]
        key = f"gap:{self.partition_key}:{self.missing}:{self.attempts}:{int(self.higher_missing)}:{digest}"
        return key + (f":suspect{self.suspect}" if self.suspect else "")

    @property
    def needs_run(self) -> bool:
        return bool(self.missing or self.higher_missing or self.suspect)


def days_to_scan(today: dt.date, lookback_days: int, first_day: dt.date) -> list[str]:
    """Newest first: today, yesterday, … never before the first partition."""
    days = [today - dt.timedelta(days=i) for i in range(lookback_days)]
    return [d.isoformat() for d in days if d >= first_day]


def partition_gap(
    store: MongoStore, meta: MetadataStore, symbol: str, day: str, now: int
) -> tuple[PartitionGap, tuple[int, ...]]:
    start, end = day_bounds_ms(day)
    expected = expected_minutes(day, now - ARRIVAL_GRACE_MS)
    if expected.size == 0:
        return PartitionGap(day, symbol, 0, 0, False), ()
    rows = CandleStore(store).read_range(symbol, "1m", start, end, projection={"_id": 0, "open_time": 1, "flags": 1})
    have = np.fromiter((r["open_time"] for r in rows), dtype=np.int64, count=len(rows))
    # Flagged minutes that REST has not been asked about again: the repair run asks.
    suspect = tuple(
        r["open_time"]
        for r in rows
        if set(r.get("flags") or ()) & set(FINDING_FLAGS) and FLAG_VERIFIED not in (r.get("flags") or ())
    )
    records = meta.missing(symbol, "1m", start, end - 1)
    confirmed = np.array([r.open_time for r in records if r.confirmed_at is not None], dtype=np.int64)
    missing = np.setdiff1d(np.setdiff1d(expected, have), confirmed)
    attempts = sum(r.attempts for r in records if r.confirmed_at is None and r.open_time in set(missing.tolist()))
    higher_missing = False
    if missing.size == 0 and end <= now - ARRIVAL_GRACE_MS:
        higher_missing = not CandleStore(store).has(symbol, "1d", start)
    gap = PartitionGap(day, symbol, int(missing.size), int(attempts), higher_missing, len(suspect))
    return gap, tuple(missing.tolist()) + suspect
