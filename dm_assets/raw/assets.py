"""Raw MongoDB collections as external assets: lineage starts where the ingest service writes.

Dagster does not materialize these; the ingest service does. They are ``AssetSpec``s
(kind ``mongodb``) observed by ``raw_observation_sensor``, which records document
counts and the latest event time, so that freshness policies have something to judge.
"""

from __future__ import annotations

import datetime as dt

from dagster import AssetKey, AssetSpec, FreshnessPolicy

from dm_resources.contracts import RAW_GROUP, raw_asset_path
from dm_resources.mongo import COLLECTIONS, RAW_COLLECTIONS

# Live streams arrive several times a second; ten minutes of silence means the bus
# or the ingest service is down. Funding rates change once per funding interval.
RAW_FRESHNESS = FreshnessPolicy.time_window(fail_window=dt.timedelta(minutes=10), warn_window=dt.timedelta(minutes=3))
FUNDING_FRESHNESS = FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=9))


def raw_key(collection: str) -> AssetKey:
    return AssetKey(raw_asset_path(collection))


RAW_ASSET_SPECS: list[AssetSpec] = [
    AssetSpec(
        key=raw_key(name),
        description=f"{COLLECTIONS[name].description}. Written by the ingest service "
        f"(NATS JetStream → MongoDB `{name}`); observed, not materialized, by Dagster.",
        group_name=RAW_GROUP,
        metadata={
            "collection": name,
            "time_field": COLLECTIONS[name].time_field,
            "index": ", ".join(COLLECTIONS[name].key),
        },
        freshness_policy=FUNDING_FRESHNESS if name == "funding_rates" else RAW_FRESHNESS,
    )
    for name in RAW_COLLECTIONS
]
