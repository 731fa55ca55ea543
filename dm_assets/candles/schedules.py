"""Schedules: the audit job every 5 minutes over the current day's partitions."""

from __future__ import annotations

import datetime as dt

from dagster import RunRequest

from dm_assets.candles.jobs import audit_job
from dm_assets.partitions import partition_key
from dm_assets.schedules import per_symbol_schedule
from dm_resources.run_coordinator import SYMBOL_TAG


def audit_requests(day: str, symbols: list[str], tick: str) -> list[RunRequest]:
    return [
        RunRequest(
            run_key=f"audit:{day}|{s}:{tick}",
            partition_key=partition_key(day, s),
            tags={"dm/origin": "schedule", SYMBOL_TAG: s},
        )
        for s in symbols
    ]


def _today_requests(symbols: list[str], when: dt.datetime) -> list[RunRequest]:
    return audit_requests(when.astimezone(dt.UTC).date().isoformat(), symbols, when.strftime("%Y%m%dT%H%M"))


audit_schedule = per_symbol_schedule(
    "audit_schedule",
    audit_job,
    "*/5 * * * *",
    "Every 5 minutes: audit (and refresh) today's candles for every symbol partition.",
    _today_requests,
)
