"""The analytics jobs: every asset of the analytics group; the pattern series alone. Runs are as of ``as_of_ms``."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from dm_assets.analytics.pattern_assets import PATTERN_SERIES_KEY
from dm_resources.contracts import ANALYTICS_GROUP

analytics_job = define_asset_job(
    "analytics_job",
    selection=AssetSelection.groups(ANALYTICS_GROUP),
    description="Market analytics (volatility, volume, trend, spread, funding per symbol; correlation across "
    "symbols) as of the run's as_of_ms, into MongoDB `analytics`.",
    tags={"dm/job": "analytics"},
)

pattern_series_job = define_asset_job(
    "pattern_series_job",
    selection=AssetSelection.assets(PATTERN_SERIES_KEY),
    description="The pattern search's dense close series per symbol, as of the run's as_of_ms.",
    tags={"dm/job": "pattern_series"},
)
