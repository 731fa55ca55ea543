"""Jobs over the date × symbol assets (partitions are inferred from the assets)."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from dm_resources.contracts import CANDLES_GROUP, QUALITY_GROUP

CANDLES_AND_QUALITY = AssetSelection.groups(CANDLES_GROUP, QUALITY_GROUP)

candles_job = define_asset_job(
    "candles_job",
    selection=CANDLES_AND_QUALITY,
    description="Builds candles (1m → 1d) for the requested partitions, then audits and scores them.",
    tags={"dm/job": "candles"},
)

audit_job = define_asset_job(
    "audit_job",
    selection=CANDLES_AND_QUALITY,
    description=(
        "Scheduled audit of the current day: refreshes the day's candles (new minutes, gap fills), runs the "
        "checks, writes audit_logs and health_metrics."
    ),
    tags={"dm/job": "audit"},
)
