"""Observation of the raw collections: counts and latest event time as asset observations."""

from __future__ import annotations

import time
from typing import Any

from dagster import AssetObservation, DefaultSensorStatus, SensorEvaluationContext, SensorResult, sensor

from dm_assets.partitions import AUTOMATION_STATUS
from dm_assets.raw.assets import raw_key
from dm_resources.mongo import COLLECTIONS, RAW_COLLECTIONS, MongoStore
from dm_resources.resources import MongoResource


def observe_raw(store: MongoStore, now_ms: int | None = None) -> list[AssetObservation]:
    """One observation per raw collection: total documents, per-symbol latest time and lag."""
    now = int(now_ms if now_ms is not None else time.time() * 1000)
    observations = []
    for name in RAW_COLLECTIONS:
        spec = COLLECTIONS[name]
        latest: dict[str, int] = {}
        for symbol in store.symbols(name):
            extra = {"interval": "1m"} if name == "klines" else None
            rows = store.latest(name, symbol, 1, extra=extra, now_ms=now, projection={spec.time_field: 1})
            if rows:
                latest[symbol] = int(rows[-1][spec.time_field])
        newest = max(latest.values(), default=None)
        metadata: dict[str, Any] = {
            "documents": store.count(name),
            "symbols": len(latest),
            "latest_event_time_ms": newest if newest is not None else -1,
            "lag_seconds": round((now - newest) / 1000, 1) if newest is not None else -1.0,
            "latest_by_symbol": {s: t for s, t in sorted(latest.items())},
        }
        if newest is not None:
            metadata["dagster/last_updated_timestamp"] = newest / 1000
        observations.append(AssetObservation(asset_key=raw_key(name), metadata=metadata))
    return observations


@sensor(
    name="raw_observation_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus(AUTOMATION_STATUS),
    description="Observes the raw MongoDB collections (counts, latest event time) for lineage and freshness.",
)
def raw_observation_sensor(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult:
    return SensorResult(asset_events=observe_raw(mongo.get_store()))
