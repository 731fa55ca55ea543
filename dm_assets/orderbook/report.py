"""What one partition's rebuild found, judged: the check's verdict, the audit row, the health row, the spans.

Every span of the window without a proven book is labelled:

* ``healed``: a break (or the wait for a first snapshot) that a stored snapshot re-synced;
* ``open``: still without a book at the end of the current day's window: the next snapshot
  the schedule takes can end it;
* ``unrecoverable``: still without a book at the end of a *past* day whose diffs are all in
  (the day is final): no stored snapshot re-syncs it and Binance serves no past snapshot, so
  no run can heal it. The check, the audit row and the health reason say so, and the sensor
  stops asking for runs of that day;
* ``live edge``: the newest moments of the current day, waiting for the next diff (within
  the grace; not an error).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dm_assets.orderbook.book import BookStats
from dm_resources.intervals import MINUTE_MS

if TYPE_CHECKING:
    from dm_resources.metadata.schemas import AuditLogIn, HealthMetricIn, Severity

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
CHECKPOINT_CHECK_NAME = "orderbook_checkpoint"
UNRECOVERABLE = "unrecoverable"
MAX_LISTED = 20


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class BookDay:
    """One partition's rebuild: what was written, what the replay saw, and how the run got there."""

    symbol: str
    day: str
    window: tuple[int, int]
    stats: BookStats = field(default_factory=BookStats)
    final: bool = False  # a past day whose diffs are all stored: nothing later can change it
    history_start: int | None = None  # set on the symbol's first day: no book is judged before it
    documents: int = 0
    upserted: int = 0
    modified: int = 0
    deleted: int = 0  # stored rows the current data no longer proves
    diffs_read: int = 0
    replay: str = "full"  # or "resumed from checkpoint u=…"
    checkpoint_mismatch: str | None = None
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

    # -- spans -------------------------------------------------------------------------------
    def spans(self) -> list[dict[str, Any]]:
        """Every span of the window without a proven book, oldest first, with its reason and status."""
        end = self.window[1]
        out = []
        for a, b, reason in self.stats.invalid_intervals:
            status = "healed" if b < end else (UNRECOVERABLE if self.final else "open")
            out.append({"start": a, "end": b, "reason": reason, "status": status})
        if self.stats.unproven_ms > 0:
            a = end - self.stats.unproven_ms
            pending = self.stats.pending_snapshot
            reason = (
                f"awaiting the diffs after snapshot lastUpdateId {pending[0]} (taken {_iso(pending[1])})"
                if pending is not None
                else f"unproven: no stored diff after {_iso(a)} proves the book yet"
            )
            beyond = self.stats.unproven_ms > UNPROVEN_GRACE_MS
            status = (UNRECOVERABLE if self.final else "open") if beyond else "live edge"
            out.append({"start": a, "end": end, "reason": reason, "status": status})
        return out

    @property
    def unrecoverable_ms(self) -> int:
        return sum(s["end"] - s["start"] for s in self.spans() if s["status"] == UNRECOVERABLE)

    def _unrecoverable_text(self) -> str:
        lost = [s for s in self.spans() if s["status"] == UNRECOVERABLE]
        if not lost:
            return ""
        first = lost[0]
        return (
            f"; UNRECOVERABLE: {self.unrecoverable_ms / 1000:.0f} s from {_iso(first['start'])} ({first['reason']}): "
            "no stored snapshot re-syncs it and no past snapshot can be fetched"
        )

    # -- words -------------------------------------------------------------------------------
    def message(self) -> str:
        s = self.stats
        if self.window_ms == 0:
            return f"{self.day} {self.symbol}: the day has not started"
        unusable = f" ({s.unusable[0][2]})" if s.unusable else ""
        return (
            f"{self.day} {self.symbol}: {s.breaks} continuity break(s), {s.resyncs} re-sync(s), "
            f"{s.crossed} crossed book(s), {s.snapshots_unusable} unusable snapshot(s){unusable}, "
            f"{s.invalid_ms / 1000:.0f} s of {self.window_ms / 1000:.0f} s without a valid book, "
            f"{s.unproven_ms / 1000:.0f} s unproven at the end; {self.documents} top-of-book rows written"
            f"{self._unrecoverable_text()}"
        )

    def reason(self) -> str:
        """The health's reason in one line: what cost points, or that nothing did."""
        if self.passed:
            return "continuous: every moment of the window has a proven book"
        s = self.stats
        parts = []
        if s.breaks:
            parts.append(f"{s.breaks} continuity break(s)")
        if s.crossed:
            parts.append(f"{s.crossed} crossed book(s)")
        if s.snapshots_unusable:
            parts.append(f"{s.snapshots_unusable} unusable snapshot(s)")
        if self.dark_ms:
            parts.append(f"{self.dark_ms / 1000:.0f} s without a proven book")
        return ", ".join(parts) + self._unrecoverable_text()

    # -- scores and rows ---------------------------------------------------------------------
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
        spans = self.spans()
        return {
            "symbol": self.symbol,
            "day": self.day,
            "window": list(self.window),
            "final": self.final,
            "history_start": self.history_start,
            "replay": self.replay,
            "checkpoint_mismatch": self.checkpoint_mismatch,
            "diffs_read": self.diffs_read,
            "documents": self.documents,
            "upserted": self.upserted,
            "modified": self.modified,
            "deleted": self.deleted,
            "snapshot_taken": self.snapshot_taken,
            "snapshot_error": self.snapshot_error,
            **{k: v for k, v in s.items() if k not in ("invalid_intervals", "unusable_snapshots")},
            "unrecoverable_ms": self.unrecoverable_ms,
            "unusable_snapshots": s["unusable_snapshots"][:MAX_LISTED],
            "spans": spans[:MAX_LISTED],
        }

    def summary(self, as_of: int) -> dict[str, Any]:
        """What the API and the sensor read back (``orderbook_checkpoints.summary``)."""
        return {
            "window": list(self.window),
            "as_of": as_of,
            "final": self.final,
            "history_start": self.history_start,
            "passed": self.passed,
            "severity": self.severity,
            "spans": self.spans()[:500],
        }

    def audit_row(self, asset_key: str, run_id: str | None = None) -> AuditLogIn:
        from dm_resources.metadata.schemas import AuditLogIn

        return AuditLogIn(
            check_name=CHECK_NAME,
            severity=self.severity,
            passed=self.passed,
            message=self.message()[:2000],
            details=self.as_metadata(),
            asset_key=asset_key,
            partition_key=f"{self.day}|{self.symbol}",
            symbol=self.symbol,
            interval=HEALTH_INTERVAL,
            run_id=run_id,
        )

    def mismatch_audit_row(self, asset_key: str, run_id: str | None = None) -> AuditLogIn | None:
        """The audit row of a checkpoint that did not match the stored diffs (the run replayed in full)."""
        if self.checkpoint_mismatch is None:
            return None
        from dm_resources.metadata.schemas import AuditLogIn

        return AuditLogIn(
            check_name=CHECKPOINT_CHECK_NAME,
            severity="WARN",
            passed=False,
            message=f"{self.day} {self.symbol}: {self.checkpoint_mismatch}; replayed the day in full from its "
            "first snapshot instead",
            details={"event": "checkpoint_mismatch", "reason": self.checkpoint_mismatch},
            asset_key=asset_key,
            partition_key=f"{self.day}|{self.symbol}",
            symbol=self.symbol,
            interval=HEALTH_INTERVAL,
            run_id=run_id,
        )

    def health_row(self, run_id: str | None = None) -> HealthMetricIn:
        from dm_resources.metadata.schemas import HealthMetricIn

        h = self.health()
        meta = self.as_metadata()
        details: dict[str, Any] = {"source": CHECK_NAME, "reason": self.reason(), **meta}
        if not self.passed:
            details["failed_checks"] = {CHECK_NAME: {"severity": self.severity, "count": max(1, self.incidents)}}
        return HealthMetricIn(
            symbol=self.symbol,
            interval=HEALTH_INTERVAL,
            day=dt.date.fromisoformat(self.day),
            details=details,
            run_id=run_id,
            **h,
        )
