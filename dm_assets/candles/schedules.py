"""Schedules: the audit job every 5 minutes over the current day's partitions."""

from __future__ import annotations

import datetime as dt

from dagster import DefaultScheduleStatus, RunRequest, ScheduleEvaluationContext, SkipReason, schedule

from dm_assets.candles.jobs import audit_job
from dm_assets.partitions import AUTOMATION_STATUS, SYMBOLS_PARTITIONS_NAME, partition_key


def audit_requests(day: str, symbols: list[str], tick: str) -> list[RunRequest]:
    return [
        RunRequest(
            run_key=f"audit:{day}|{s}:{tick}", partition_key=partition_key(day, s), tags={"dm/origin": "schedule"}
        )
        for s in symbols
    ]


@schedule(
    name="audit_schedule",
    job=audit_job,
    cron_schedule="*/5 * * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus(AUTOMATION_STATUS),
    description="Every 5 minutes: audit (and refresh) today's candles for every symbol partition.",
)
def audit_schedule(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
    when = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    day = when.astimezone(dt.UTC).date().isoformat()
    symbols = sorted(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    if not symbols:
        return SkipReason("no symbol partitions yet (the symbol discovery sensor adds them)")
    return audit_requests(day, symbols, when.strftime("%Y%m%dT%H%M"))
