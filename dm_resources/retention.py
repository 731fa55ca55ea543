"""What each high-volume collection keeps (``DM_RETENTION_*_DAYS``), without Dagster imports.

Shared by the retention job (dm_assets/retention), the catalog and the API, so all three
report the same policy.
"""

from __future__ import annotations

from typing import Any

from dm_resources.contracts import ORDERBOOK_SNAPSHOTS_PATH, candle_asset_path
from dm_resources.settings import RETENTION_WHY, Settings

_CANDLES_1M = "/".join(candle_asset_path("1m"))
_ORDERBOOK = "/".join(ORDERBOOK_SNAPSHOTS_PATH)

# Which date × symbol asset reads each collection day by day: a day is deletable only once that
# asset's partition for the day is materialized. The others are read over trailing windows of at
# most an hour (spread, funding) that the minimum retention covers.
CONSUMERS: dict[str, str | None] = {
    "agg_trades": _CANDLES_1M,
    "depth_updates": _ORDERBOOK,
    "depth_snapshots": _ORDERBOOK,
    "book_tickers": None,
    "tickers": None,
    "mark_prices": None,
    "analytics": None,
}


def retention_table(settings: Settings) -> list[dict[str, Any]]:
    """Each collection's retention, what deletes it and what it never deletes."""
    out = []
    for name, consumer in CONSUMERS.items():
        days = settings.retention_days(name) or 0
        out.append(
            {
                "collection": name,
                "retention_days": days or None,
                "keep_forever": days == 0,
                "deletes": None if days == 0 else "whole UTC days older than the retention, by the daily retention job",
                "never_deletes": f"a day whose {consumer} partition is not materialized" if consumer else None,
                "minimum_reason": RETENTION_WHY[name],
                "env": f"DM_RETENTION_{name.upper()}_DAYS",
            }
        )
    return out


def retention_note(settings: Settings, collection: str) -> str | None:
    """One sentence for a dataset's catalog description; None when the collection has no retention setting."""
    if collection not in CONSUMERS:
        return None
    days = settings.retention_days(collection) or 0
    if days == 0:
        return f"Retention: kept forever (DM_RETENTION_{collection.upper()}_DAYS=0)."
    guard = CONSUMERS[collection]
    tail = f", except days whose {guard} partition is still pending" if guard else ""
    return f"Retention: {days} days (whole UTC days deleted daily{tail})."
