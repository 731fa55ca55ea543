"""The shape every per-symbol schedule shares: on each tick, one set of run requests over the
``symbols`` dynamic partitions, or a skip that says why when there are none yet."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from dm_assets.partitions import AUTOMATION_STATUS, SYMBOLS_PARTITIONS_NAME
from dm_resources.run_coordinator import with_symbol_tag

if TYPE_CHECKING:  # what define_asset_job returns; Dagster does not export the name
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

Requests = Callable[[list[str], dt.datetime], list[RunRequest]]


def per_symbol_schedule(
    name: str, job: UnresolvedAssetJobDefinition, cron: str, description: str, requests: Requests
) -> ScheduleDefinition:
    """A UTC schedule of ``job`` whose tick asks ``requests(symbols, tick time)`` for its runs."""

    @schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus(AUTOMATION_STATUS),
        description=description,
    )
    def _tick(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        when = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        symbols = sorted(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
        if not symbols:
            return SkipReason("no symbol partitions yet (the symbol discovery sensor adds them)")
        # Every run carries its dm/symbol tag (the per-symbol run limit in dagster.yaml keys on it).
        return [r.with_replaced_attrs(tags=with_symbol_tag(r.tags, r.partition_key)) for r in requests(symbols, when)]

    return _tick
