"""Keeps ``backfill_jobs`` in step with Dagster's backfills and runs."""

from __future__ import annotations

import datetime as dt

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, sensor

from dm_assets.backfills.tracking import sync_backfills, sync_run_groups, sync_runs
from dm_assets.partitions import AUTOMATION_STATUS
from dm_resources.resources import MetadataResource


@sensor(
    name="backfill_tracking_sensor",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus(AUTOMATION_STATUS),
    description="Mirrors every backfill (UI, API) and every sensor/schedule run into backfill_jobs with its status.",
)
def backfill_tracking_sensor(context: SensorEvaluationContext, metadata: MetadataResource) -> SensorResult:
    # Look back a little before the last tick so a run updated during the previous one is not missed.
    since = None
    if context.cursor:
        since = dt.datetime.fromisoformat(context.cursor) - dt.timedelta(minutes=2)
    now = dt.datetime.now(dt.UTC)
    meta = metadata.get_store()
    counts = {
        **sync_backfills(context.instance, meta),
        **sync_runs(context.instance, meta, since),
        **sync_run_groups(context.instance, meta, since),
    }
    context.log.info(f"backfill tracking: {counts}")
    return SensorResult(cursor=now.isoformat(), skip_reason=None if any(counts.values()) else "nothing changed")
