"""Mirror every Dagster backfill and every sensor/schedule-requested run into ``backfill_jobs``.

Operators start backfills from the UI, the API starts them through GraphQL, the gap
sensor and the audit schedule request runs: all of them end up as one row each in
the metadata store, with a status kept in step with Dagster by ``backfill_tracking_sensor``.
Row ids: the Dagster backfill id for backfills (the API creates its row under that id
before Dagster reports it), ``run:<run id>`` for single runs.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from dagster import DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import PartitionBackfill

from dm_assets.partitions import split_key
from dm_resources.backfill_status import backfill_status as shared_backfill_status
from dm_resources.backfill_status import origin_of, run_status
from dm_resources.metadata.schemas import BackfillStatus

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from dm_resources.metadata.store import MetadataStore

ORIGIN_TAG = "dm/origin"
GROUP_TAG = "dm/backfill"  # the runs of one POST /backfill/start (api/backfills.py)
TRACKED_RUN_ORIGINS = ("sensor", "schedule")


def backfill_status(backfill: PartitionBackfill, run_statuses: list[DagsterRunStatus]) -> BackfillStatus:
    """Our status for a Dagster backfill: the one mapping shared with the API."""
    return shared_backfill_status(backfill.status, run_statuses)


def _partition_keys(backfill: PartitionBackfill) -> list[str]:
    keys: set[str] = set()
    data = backfill.asset_backfill_data
    if data is not None:
        for akpk in data.target_subset.iterate_asset_partitions():
            if akpk.partition_key is not None:
                keys.add(str(akpk.partition_key))
    elif backfill.partition_names:
        keys.update(backfill.partition_names)
    return sorted(keys)


def _window(keys: list[str]) -> tuple[list[str], int | None, int | None]:
    from dm_assets.partitions import day_bounds_ms

    symbols: set[str] = set()
    days: set[str] = set()
    for k in keys:
        try:
            day, symbol = split_key(k)
        except ValueError:
            continue
        symbols.add(symbol)
        days.add(day)
    if not days:
        return sorted(symbols), None, None
    return sorted(symbols), day_bounds_ms(min(days))[0], day_bounds_ms(max(days))[1]


def sync_backfills(instance: DagsterInstance, meta: MetadataStore, limit: int = 50) -> dict[str, int]:
    """Create or update one row per recent Dagster backfill; returns counts for the sensor log."""
    created = updated = 0
    for bf in instance.get_backfills(limit=limit):
        runs = instance.get_runs(filters=RunsFilter(tags={"dagster/backfill": bf.backfill_id}))
        status = backfill_status(bf, [r.status for r in runs])
        run_ids = sorted(r.run_id for r in runs)
        existing = meta.get_backfill_job(bf.backfill_id)
        error = bf.error.message[:2000] if bf.error is not None else None
        if existing is None:
            keys = _partition_keys(bf)
            symbols, start, end = _window(keys)
            meta.create_backfill_job(
                origin=origin_of(bf.tags.get(ORIGIN_TAG)),
                symbols=symbols or ["*"],
                interval="1m",
                start_time=start,
                end_time=end,
                partition_keys=keys,
                status=status,
                requested_by=bf.user or bf.tags.get("user"),
                dagster_backfill_id=bf.backfill_id,
                job_id=bf.backfill_id,
            )
            if run_ids or error:
                meta.update_backfill_job(bf.backfill_id, dagster_run_ids=run_ids, **({"error": error} if error else {}))
            created += 1
        elif existing.status != status or (existing.dagster_run_ids or []) != run_ids:
            fields: dict[str, Any] = {
                "status": status,
                "dagster_run_ids": run_ids,
                "dagster_backfill_id": bf.backfill_id,
            }
            if error:
                fields["error"] = error
            meta.update_backfill_job(bf.backfill_id, **fields)
            updated += 1
    return {"backfills_created": created, "backfills_updated": updated}


def sync_run_groups(instance: DagsterInstance, meta: MetadataStore, since: dt.datetime | None) -> dict[str, int]:
    """Rows of ``POST /backfill/start`` (``runs:<uuid>``): status and run ids from the runs tagged with the row id."""
    from dm_resources.backfill_status import run_group_status

    updated = 0
    recent = instance.get_runs(filters=RunsFilter(tags={ORIGIN_TAG: "api"}, updated_after=since), limit=1000)
    for job_id in sorted({r.tags[GROUP_TAG] for r in recent if r.tags.get(GROUP_TAG)}):
        existing = meta.get_backfill_job(job_id)
        if existing is None:
            continue
        runs = instance.get_runs(filters=RunsFilter(tags={GROUP_TAG: job_id}))
        status = run_group_status(r.status for r in runs)
        run_ids = sorted(r.run_id for r in runs)
        if existing.status != status or sorted(existing.dagster_run_ids or []) != run_ids:
            meta.update_backfill_job(job_id, status=status, dagster_run_ids=run_ids)
            updated += 1
    return {"run_groups_updated": updated}


def sync_runs(instance: DagsterInstance, meta: MetadataStore, since: dt.datetime | None) -> dict[str, int]:
    """One row per run requested by our sensors and schedules (each is a one-partition backfill)."""
    created = updated = 0
    for origin in TRACKED_RUN_ORIGINS:
        runs = instance.get_runs(filters=RunsFilter(tags={ORIGIN_TAG: origin}, updated_after=since), limit=500)
        for run in runs:
            job_id = f"run:{run.run_id}"
            status = run_status(run.status)
            existing = meta.get_backfill_job(job_id)
            if existing is None:
                pk = run.tags.get("dagster/partition")
                keys = [pk] if pk else []
                symbols, start, end = _window(keys)
                meta.create_backfill_job(
                    origin=origin_of(origin),
                    symbols=symbols or ["*"],
                    interval="1m",
                    start_time=start,
                    end_time=end,
                    partition_keys=keys,
                    status=status,
                    job_id=job_id,
                )
                meta.update_backfill_job(job_id, dagster_run_ids=[run.run_id])
                created += 1
            elif existing.status != status:
                meta.update_backfill_job(job_id, status=status)
                updated += 1
    return {"runs_created": created, "runs_updated": updated}
