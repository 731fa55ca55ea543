"""Retention domain: the daily job that drops raw days no pending partition still needs."""

from dagster import Definitions

from dm_assets.retention.assets import RETENTION_ASSETS, retention_job, retention_schedule

defs = Definitions(assets=RETENTION_ASSETS, jobs=[retention_job], schedules=[retention_schedule])
