"""Retention domain: the daily job that drops raw days no pending partition still needs."""

from dagster import Definitions

from dm_assets.policy import with_domain_policy
from dm_assets.retention.assets import RETENTION_ASSETS
from dm_assets.retention.jobs import retention_job
from dm_assets.retention.schedules import retention_schedule
from dm_resources.contracts import MAINTENANCE_GROUP

defs = with_domain_policy(
    Definitions(assets=RETENTION_ASSETS, jobs=[retention_job], schedules=[retention_schedule]),
    layer=MAINTENANCE_GROUP,
    kinds={"mongodb"},
)
