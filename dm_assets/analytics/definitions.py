"""Analytics domain: per-symbol analytics and cross-symbol correlation, refreshed on a schedule."""

from dagster import Definitions

from dm_assets.analytics.assets import ANALYTICS_ASSETS
from dm_assets.analytics.pattern_assets import pattern_series, pattern_series_job, pattern_series_schedule
from dm_assets.analytics.schedules import analytics_job, analytics_schedule

defs = Definitions(
    assets=[*ANALYTICS_ASSETS, pattern_series],
    jobs=[analytics_job, pattern_series_job],
    schedules=[analytics_schedule, pattern_series_schedule],
)
