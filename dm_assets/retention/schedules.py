"""Retention once a day, at a quiet minute."""

from __future__ import annotations

from dagster import DefaultScheduleStatus, ScheduleDefinition

from dm_assets.partitions import AUTOMATION_STATUS
from dm_assets.retention.jobs import retention_job

retention_schedule = ScheduleDefinition(
    name="retention_schedule",
    job=retention_job,
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus(AUTOMATION_STATUS),
    description="Daily at 03:17 UTC: delete raw and analytics days past their retention (never pending ones).",
)
