"""The analytics job: every asset of the analytics group, each run as of its ``as_of_ms``."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from dm_resources.contracts import ANALYTICS_GROUP

analytics_job = define_asset_job(
    "analytics_job",
    selection=AssetSelection.groups(ANALYTICS_GROUP),
    description="Market analytics (volatility, volume, trend, spread, funding per symbol; correlation across "
    "symbols) as of the run's as_of_ms, into MongoDB `analytics`.",
    tags={"dm/job": "analytics"},
)
