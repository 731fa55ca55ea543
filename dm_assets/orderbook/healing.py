"""Which past days of the order book a run can still heal, and which are final.

No past snapshot can be fetched: a day's book is rebuilt only from the snapshots and diffs
stored while it was live. A day whose last rebuild ran before its diffs were all in (the day
was still current, or just over) may be healed by a rebuild now: a snapshot stored after that
run, or the diffs that prove one, can re-sync a span that was open then. Once a rebuild ran
with the day final (``FINAL_AFTER_MS`` past its end) nothing stored later can change it: its
remaining spans are labelled unrecoverable and no run is requested for it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dm_assets.orderbook.report import UNRECOVERABLE

LOOKBACK_DAYS = 3


@dataclass(frozen=True)
class HealDecision:
    day: str
    symbol: str
    request: bool
    reason: str
    run_key: str | None = None


def decide(day: str, symbol: str, summary: Mapping[str, Any] | None, has_snapshots: Callable[[], bool]) -> HealDecision:
    """Request a rebuild of a past day unless its last rebuild was final (or there is nothing to build from)."""
    if summary is None:
        if has_snapshots():
            key = f"orderbook-heal:{symbol}:{day}:never"
            return HealDecision(day, symbol, True, "never rebuilt, and snapshots are stored", key)
        return HealDecision(day, symbol, False, "never rebuilt, and no snapshot is stored: nothing to build from")
    if summary.get("final"):
        lost = [s for s in summary.get("spans") or [] if s.get("status") == UNRECOVERABLE]
        what = f"{len(lost)} unrecoverable span(s), not requested again" if lost else "continuous"
        return HealDecision(day, symbol, False, f"final: {what}")
    as_of = int(summary.get("as_of") or 0)
    return HealDecision(
        day,
        symbol,
        True,
        "last rebuilt before the day's diffs were all in: a stored snapshot may heal its open spans",
        f"orderbook-heal:{symbol}:{day}:{as_of}",
    )


def past_days(today: dt.date, lookback: int = LOOKBACK_DAYS, first: dt.date | None = None) -> list[str]:
    """The ``lookback`` days before ``today`` (never before ``first``), oldest first."""
    days = [today - dt.timedelta(days=i) for i in range(lookback, 0, -1)]
    return [d.isoformat() for d in days if first is None or d >= first]
