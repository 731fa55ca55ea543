"""Analytics domain: per-symbol analytics and cross-symbol correlation, refreshed on a schedule.

A new analytics family adds its assets (and any job, schedule or sensor of its own) to the
lists below; the domain's shared tags and kinds reach it through ``with_domain_policy``.
"""

from dagster import Definitions

from dm_assets.analytics.assets import ANALYTICS_ASSETS
from dm_assets.analytics.jobs import analytics_job, pattern_series_job
from dm_assets.analytics.pattern_assets import pattern_series
from dm_assets.analytics.schedules import analytics_schedule, pattern_series_schedule
from dm_assets.policy import with_domain_policy
from dm_resources.contracts import ANALYTICS_GROUP

ASSETS = [*ANALYTICS_ASSETS, pattern_series]
JOBS = [analytics_job, pattern_series_job]
SCHEDULES = [analytics_schedule, pattern_series_schedule]
SENSORS: list = []

defs = with_domain_policy(
    Definitions(assets=ASSETS, jobs=JOBS, schedules=SCHEDULES, sensors=SENSORS),
    layer=ANALYTICS_GROUP,
    kinds={"mongodb", "pandas"},
)
