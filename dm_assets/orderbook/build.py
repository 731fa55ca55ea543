"""Store glue for the order book: REST snapshots in, proven top-N snapshots, audit rows and health out.

Why a Dagster asset over the *stored* diffs (and not a component beside the ingest service):

* The diffs are already stored exactly once by the ingest service; a day × symbol rebuild is
  a pure function of what is stored (snapshots + diffs), so it is re-runnable, backfillable
  from the UI, idempotent (deterministic ``_id``s, ``sync_range`` writes only changes) and
  visible in lineage and checks like every other product. A second live consumer of the bus
  would hold the book in memory, lose it on every restart and duplicate the ingest's job.
* The one thing a rebuild cannot do after the fact is take a REST snapshot *in the past*:
  Binance only serves the book as of now. So the asset, when its partition is the current
  day, first takes a snapshot (``GET /fapi/v1/depth?limit=1000``, weight 20) and stores it in
  ``depth_snapshots``; the schedule runs it every 5 minutes, which bounds how long a break
  stays unrepaired (the book is valid again at the first stored diff covering that snapshot).
  Past days are rebuilt from the snapshots stored while they were live.
* Cost: the live day is replayed from its first snapshot on every run (O(diffs so far)). A
  checkpoint of the book at the last proven event would make it incremental; not needed at
  the embedded stack's volumes, and the rebuild is the simpler thing to trust.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson.decimal128 import Decimal128

from dm_assets.orderbook.book import (
    DEFAULT_CADENCE_MS,
    DEFAULT_DEPTH,
    BookStats,
    Diff,
    Snapshot,
    TopOfBook,
    reconstruct,
)
from dm_assets.partitions import day_bounds_ms
from dm_resources.contracts import now_ms
from dm_resources.intervals import HOUR_MS, MINUTE_MS

if TYPE_CHECKING:
    from dm_resources.binance import BinanceClient
    from dm_resources.metadata.schemas import AuditLogIn, HealthMetricIn, Severity
    from dm_resources.mongo import MongoStore

SNAPSHOT_LIMIT = 1000
# A day starts from the newest snapshot taken up to this long before midnight.
WARMUP_MS = 2 * HOUR_MS
# The event containing a snapshot's lastUpdateId may carry an event time a little before the
# snapshot's own E: read diffs from this much earlier.
DIFF_MARGIN_MS = 10_000
# Diffs read past the window's end, so its last grid points can be proven by the next event.
TAIL_MS = MINUTE_MS
# Health: each incident (break, crossed book, unusable snapshot) costs this much consistency.
INCIDENT_PENALTY = 10.0
# Health weights: the candle health's (completeness 0.5, freshness 0.2, consistency 0.3).
WEIGHTS = (0.5, 0.2, 0.3)
# Severity: more than this share of the window without a book is an ERROR, less a WARN.
ERROR_INVALID_SHARE = 0.05
# The live edge: diffs still arriving (ingest lag) leave the newest moments unproven.
UNPROVEN_GRACE_MS = 2 * MINUTE_MS
HEALTH_INTERVAL = "book"
CHECK_NAME = "orderbook_continuity"


def take_snapshot(client: BinanceClient, store: MongoStore, symbol: str, *, limit: int = SNAPSHOT_LIMIT) -> int:
    """Fetch the book now and store it in ``depth_snapshots``; returns its ``lastUpdateId``."""
    snap = client.fetch_depth(symbol, limit=limit)
    store.insert_idempotent("depth_snapshots", [snap.to_document(fetched_at=now_ms())])
    return snap.last_update_id


def snapshot_headers(store: MongoStore, symbol: str, lo: int, hi: int) -> list[Snapshot]:
    """Stored snapshots in ``[lo, hi)`` without their levels (loaded only when one is used)."""
    rows = store.read_range(
        "depth_snapshots", symbol, lo, hi, projection={"_id": 0, "last_update_id": 1, "snapshot_time": 1}
    )
    return [Snapshot(int(r["last_update_id"]), int(r["snapshot_time"])) for r in rows]


def snapshot_loader(store: MongoStore, symbol: str) -> Callable[[Snapshot], Snapshot]:
    def load(header: Snapshot) -> Snapshot:
        doc = store.collection("depth_snapshots").find_one({"_id": f"{symbol}:{header.last_update_id}"})
        if doc is None:  # deleted between the header read and now (retention): an empty book would be wrong
            raise LookupError(f"depth snapshot {symbol}:{header.last_update_id} disappeared")
        return Snapshot.from_document(doc)

    return load


def _f(x: Any) -> float:
    return float(x)


def top_document(symbol: str, top: TopOfBook) -> dict[str, Any]:
    """One ``orderbook_snapshots`` document: exact levels plus the floats analytics read."""
    bid, ask = top.bids[0][0] if top.bids else None, top.asks[0][0] if top.asks else None
    mid = spread = None
    if bid is not None and ask is not None:
        mid = (_f(bid) + _f(ask)) / 2
        spread = (_f(ask) - _f(bid)) / mid * 1e4
    bq = sum(_f(q) for _, q in top.bids)
    aq = sum(_f(q) for _, q in top.asks)
    return {
        "_id": f"{symbol}:{top.time}",
        "symbol": symbol,
        "snapshot_time": top.time,
        "last_update_id": top.last_update_id,
        "last_event_time": top.last_event_time,
        "depth": max(len(top.bids), len(top.asks)),
        "bids": [[Decimal128(p), Decimal128(q)] for p, q in top.bids],
        "asks": [[Decimal128(p), Decimal128(q)] for p, q in top.asks],
        "mid": mid,
        "spread_bps": spread,
        "bid_qty": bq,
        "ask_qty": aq,
        "imbalance": (bq - aq) / (bq + aq) if bq + aq > 0 else None,
    }


@dataclass
class BookDay:
    """One partition's rebuild: what was written and what the replay saw."""

    symbol: str
    day: str
    window: tuple[int, int]
    stats: BookStats = field(default_factory=BookStats)
    documents: int = 0
    upserted: int = 0
    modified: int = 0
    snapshot_taken: int | None = None
    snapshot_error: str | None = None

    @property
    def window_ms(self) -> int:
        return max(0, self.window[1] - self.window[0])

    @property
    def incidents(self) -> int:
        s = self.stats
        return s.breaks + s.crossed + s.snapshots_unusable

    @property
    def dark_ms(self) -> int:
        """Time without a proven book: invalid spans plus an unproven tail longer than the grace.

        The tail counts too: if the diffs stop (ingest down), the last book is never disproven
        but not proven either, and a day with no diffs at all must not pass.
        """
        return self.stats.invalid_ms + max(0, self.stats.unproven_ms - UNPROVEN_GRACE_MS)

    @property
    def passed(self) -> bool:
        """Only when nothing was found: no break, no crossed book, no unusable snapshot, no time without a book."""
        return self.incidents == 0 and self.dark_ms == 0

    @property
    def severity(self) -> Severity:
        if self.passed:
            return "INFO"
        share = self.dark_ms / self.window_ms if self.window_ms else 1.0
        return "ERROR" if share > ERROR_INVALID_SHARE else "WARN"

    def message(self) -> str:
        s = self.stats
        if self.window_ms == 0:
            return f"{self.day} {self.symbol}: the day has not started"
        return (
            f"{self.day} {self.symbol}: {s.breaks} continuity break(s), {s.resyncs} re-sync(s), "
            f"{s.crossed} crossed book(s), {s.snapshots_unusable} unusable snapshot(s), "
            f"{s.invalid_ms / 1000:.0f} s of {self.window_ms / 1000:.0f} s without a valid book, "
            f"{s.unproven_ms / 1000:.0f} s unproven at the end; "
            f"{self.documents} top-of-book snapshots"
        )

    def health(self) -> dict[str, float]:
        """0–100 scores: completeness = share of the window with a book; consistency loses 10 per incident."""
        if self.window_ms == 0:
            return {"completeness": 0.0, "freshness": 0.0, "consistency": 0.0, "score": 0.0}
        completeness = 100.0 * max(0.0, 1 - self.stats.invalid_ms / self.window_ms)
        late = max(0, self.stats.unproven_ms - MINUTE_MS)
        # Never a valid book: nothing is fresh. Otherwise the unproven tail beyond a minute costs.
        freshness = 0.0 if self.stats.valid_ms == 0 else 100.0 * max(0.0, 1 - late / (10 * MINUTE_MS))
        consistency = max(0.0, 100.0 - INCIDENT_PENALTY * self.incidents)
        w = WEIGHTS
        score = w[0] * completeness + w[1] * freshness + w[2] * consistency
        return {
            "completeness": round(completeness, 4),
            "freshness": round(freshness, 4),
            "consistency": round(consistency, 4),
            "score": round(score, 4),
        }

    def as_metadata(self) -> dict[str, Any]:
        s = self.stats.to_dict()
        s["invalid_intervals"] = s["invalid_intervals"][:20]
        return {
            "symbol": self.symbol,
            "day": self.day,
            "documents": self.documents,
            "upserted": self.upserted,
            "modified": self.modified,
            "snapshot_taken": self.snapshot_taken,
            "snapshot_error": self.snapshot_error,
            **{k: v for k, v in s.items() if k != "invalid_intervals"},
            "invalid_intervals": s["invalid_intervals"],
        }

    def audit_row(self, asset_key: str, run_id: str | None = None) -> AuditLogIn:
        from dm_resources.metadata.schemas import AuditLogIn

        details = self.as_metadata()
        return AuditLogIn(
            check_name=CHECK_NAME,
            severity=self.severity,
            passed=self.passed,
            message=self.message(),
            details=details,
            asset_key=asset_key,
            partition_key=f"{self.day}|{self.symbol}",
            symbol=self.symbol,
            interval=HEALTH_INTERVAL,
            run_id=run_id,
        )

    def health_row(self, run_id: str | None = None) -> HealthMetricIn:
        from dm_resources.metadata.schemas import HealthMetricIn

        h = self.health()
        return HealthMetricIn(
            symbol=self.symbol,
            interval=HEALTH_INTERVAL,
            day=dt.date.fromisoformat(self.day),
            details={"source": CHECK_NAME, **{k: v for k, v in self.as_metadata().items() if k != "invalid_intervals"}},
            run_id=run_id,
            **h,
        )


def _diffs(docs: Iterator[Mapping[str, Any]]) -> Iterator[Diff]:
    for d in docs:
        yield Diff.from_document(d)


def build_orderbook_day(
    store: MongoStore,
    symbol: str,
    day: str,
    *,
    now: int | None = None,
    cadence_ms: int = DEFAULT_CADENCE_MS,
    depth: int = DEFAULT_DEPTH,
) -> BookDay:
    """Rebuild one UTC day of one symbol and make ``orderbook_snapshots`` of that day equal the result."""
    now = now_ms() if now is None else now
    start, end = day_bounds_ms(day)
    hi = min(end, now)
    out = BookDay(symbol, day, (start, max(start, hi)))
    if hi <= start:
        return out
    headers = snapshot_headers(store, symbol, start - WARMUP_MS, hi)
    before = [h for h in headers if h.time <= start]
    used = before[-1:] + [h for h in headers if h.time > start]
    read_from = min(start, used[0].time - DIFF_MARGIN_MS) if used else start
    cursor = store.iter_range(
        "depth_updates",
        symbol,
        read_from,
        min(end + TAIL_MS, now + 1),
        projection={
            "_id": 0,
            "first_update_id": 1,
            "final_update_id": 1,
            "prev_final_update_id": 1,
            "event_time": 1,
            "bids": 1,
            "asks": 1,
        },
    )
    tops, out.stats = reconstruct(
        used,
        _diffs(cursor),
        start,
        hi,
        cadence_ms=cadence_ms,
        depth=depth,
        load=snapshot_loader(store, symbol),
    )
    docs = [top_document(symbol, t) for t in tops]
    res = store.sync_range("orderbook_snapshots", symbol, start, end, docs)
    out.documents, out.upserted, out.modified = len(docs), res.upserted, res.modified
    return out
