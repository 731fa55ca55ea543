"""The catalog refreshed every 10 minutes.

A schedule rather than an asset sensor or automation condition: what the catalog reports
(row counts, last times, freshness) changes continuously with the raw data, which the
ingest service writes outside Dagster, so no materialization event would announce it; and
freshness measured "seconds ago" is only useful if it is re-measured on a clock. Ten
minutes keeps it that fresh at the cost of a few bounded reads per dataset. The midnight
(UTC) tick also looks for symbols in every collection (``discover_all``), which scans.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    DefaultScheduleStatus,
    RunConfig,
    RunRequest,
    ScheduleEvaluationContext,
    schedule,
)

from dm_assets.catalog.assets import CatalogConfig
from dm_assets.catalog.jobs import catalog_job
from dm_assets.partitions import AUTOMATION_STATUS


def catalog_request(when: dt.datetime) -> RunRequest:
    when = when.astimezone(dt.UTC)
    discover_all = when.hour == 0 and when.minute < 10
    return RunRequest(
        run_key=f"catalog:{when.strftime('%Y%m%dT%H%M')}",
        run_config=RunConfig(ops={"catalog__datasets": CatalogConfig(discover_all=discover_all)}),
        tags={"dm/origin": "schedule"},
    )


@schedule(
    name="catalog_schedule",
    job=catalog_job,
    cron_schedule="*/10 * * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus(AUTOMATION_STATUS),
    description="Every 10 minutes: re-measure every dataset (counts, last time, freshness, health) and the "
    "lineage; at midnight UTC also look for new symbols in every collection.",
)
def catalog_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    return catalog_request(context.scheduled_execution_time or dt.datetime.now(dt.UTC))
