"""Dataset version counters: the small collection the API's hot cache watches instead of the data.

Every write that changed a dataset bumps its row (``candles:SYMBOL:interval``,
``analytics:SYMBOL:kind:interval``): ``$inc v``, ``$max newest``, ``updated_at``. The API polls
rows updated since its last poll (a bounded read on the ``updated_at`` index) and drops the
cache entries of the datasets that moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dm_resources.contracts import now_ms
from dm_resources.mongo import DATASET_VERSIONS

VERSIONS = DATASET_VERSIONS


def candle_key(symbol: str, interval: str) -> str:
    return f"candles:{symbol}:{interval}"


def bump_candle_version(db: Any, symbol: str, interval: str, newest: int | None) -> None:
    """Tell readers (the API cache) that this dataset changed: one tiny upsert."""
    update: dict[str, Any] = {"$inc": {"v": 1}, "$set": {"updated_at": now_ms(), "kind": "candles"}}
    if newest is not None:
        update["$max"] = {"newest": int(newest)}
    db[VERSIONS].update_one({"_id": candle_key(symbol, interval)}, update, upsert=True)


def versions_since(db: Any, since_ms: int) -> list[dict[str, Any]]:
    """Dataset version rows updated at or after ``since_ms`` (bounded read on the updated_at index)."""
    return list(db[VERSIONS].find({"updated_at": {"$gte": int(since_ms)}}))


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
