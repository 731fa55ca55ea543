"""Every backfill and every sensor/schedule run leaves a backfill_jobs row that follows its status."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

from dm_assets.backfills.tracking import sync_backfills, sync_runs
from dm_assets.candles.assets import CANDLE_ASSETS
from dm_assets.definitions import build_defs
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import load_settings
from tests.fake_exchange import FakeExchange

DAY = "2026-03-10"


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "home")) as inst:
        inst.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT", "ETHUSDT"])
        yield inst


def test_sensor_and_schedule_runs_are_recorded(
    instance: DagsterInstance, meta: MetadataStore, mongo_store: MongoStore
) -> None:
    with FakeExchange() as ex:
        res = ResourceSet(
            load_settings(
                mongo_url=mongo_store.url,
                mongo_db=mongo_store.db_name,
                metadata_url=str(meta.engine.url),
                binance_rest_url=ex.url,
            )
        )
        result = materialize(
            CANDLE_ASSETS[:1],
            instance=instance,
            partition_key=partition_key(DAY, "BTCUSDT"),
            resources=res.as_dict(),
            tags={"dm/origin": "sensor"},
        )
    assert result.success
    counts = sync_runs(instance, meta, since=None)
    assert counts == {"runs_created": 1, "runs_updated": 0}
    job = meta.get_backfill_job(f"run:{result.run_id}")
    assert job is not None
    assert (job.origin, job.status, job.symbols, job.dagster_run_ids) == (
        "sensor",
        "success",
        ["BTCUSDT"],
        [result.run_id],
    )
    assert job.partition_keys == [f"{DAY}|BTCUSDT"]
    assert (job.start_time, job.end_time) == day_bounds_ms(DAY)
    assert sync_runs(instance, meta, since=None) == {"runs_created": 0, "runs_updated": 0}  # idempotent


def test_ui_backfill_is_recorded_and_follows_status(instance: DagsterInstance, meta: MetadataStore) -> None:
    defs = build_defs(ResourceSet(load_settings(metadata_url=str(meta.engine.url))))
    keys = [f"{DAY}|BTCUSDT", "2026-03-11|ETHUSDT"]
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id="bf123",
        asset_graph=defs.resolve_asset_graph(),
        partition_names=keys,
        asset_selection=[AssetKey(["candles", "candles_1m"])],
        backfill_timestamp=time.time(),
        tags={"user": "ops@example.com"},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title="ops backfill",
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)

    assert sync_backfills(instance, meta) == {"backfills_created": 1, "backfills_updated": 0}
    job = meta.get_backfill_job("bf123")
    assert job is not None
    assert (job.origin, job.status, job.dagster_backfill_id) == ("ui", "requested", "bf123")
    assert job.symbols == ["BTCUSDT", "ETHUSDT"] and job.partition_keys == sorted(keys)
    assert (job.start_time, job.end_time) == (day_bounds_ms(DAY)[0], day_bounds_ms("2026-03-11")[1])

    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    assert sync_backfills(instance, meta) == {"backfills_created": 0, "backfills_updated": 1}
    assert meta.get_backfill_job("bf123").status == "success"  # type: ignore[union-attr]

    instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED))
    sync_backfills(instance, meta)
    assert meta.get_backfill_job("bf123").status == "canceled"  # type: ignore[union-attr]


def test_api_backfill_row_is_updated_not_duplicated(instance: DagsterInstance, meta: MetadataStore) -> None:
    """The API creates its row under the Dagster backfill id first; tracking then updates that row."""
    meta.create_backfill_job(
        origin="api",
        symbols=["BTCUSDT"],
        interval="1m",
        status="requested",
        dagster_backfill_id="bfapi",
        job_id="bfapi",
        requested_by="svc",
    )
    defs = build_defs(ResourceSet(load_settings(metadata_url=str(meta.engine.url))))
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id="bfapi",
        asset_graph=defs.resolve_asset_graph(),
        partition_names=[f"{DAY}|BTCUSDT"],
        asset_selection=[AssetKey(["candles", "candles_1m"])],
        backfill_timestamp=time.time(),
        tags={"dm/origin": "api"},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=None,
        description=None,
        run_config=None,
    ).with_status(BulkActionStatus.COMPLETED_FAILED)
    instance.add_backfill(backfill)
    assert sync_backfills(instance, meta) == {"backfills_created": 0, "backfills_updated": 1}
    job = meta.get_backfill_job("bfapi")
    assert job is not None and (job.origin, job.status, job.requested_by) == ("api", "failure", "svc")
    assert len(meta.list_backfill_jobs()) == 1


def test_one_status_mapping_for_api_and_tracking() -> None:
    """A backfill Dagster calls COMPLETED while a run is still going is ``running`` for both readers."""
    from dagster import DagsterRunStatus

    from api.backfills import backfill_status as api_status
    from dm_assets.backfills import tracking
    from dm_resources.backfill_status import backfill_status

    cases = [
        (BulkActionStatus.COMPLETED, [DagsterRunStatus.SUCCESS, DagsterRunStatus.STARTED], "running"),
        (BulkActionStatus.COMPLETED_SUCCESS, [DagsterRunStatus.SUCCESS, DagsterRunStatus.QUEUED], "running"),
        (BulkActionStatus.COMPLETED, [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE], "failure"),
        (BulkActionStatus.COMPLETED, [DagsterRunStatus.SUCCESS], "success"),
        (BulkActionStatus.FAILED, [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE], "partial"),
        (BulkActionStatus.CANCELED, [DagsterRunStatus.STARTED], "canceled"),
        (BulkActionStatus.REQUESTED, [], "requested"),
    ]
    for status, runs, ours in cases:
        assert backfill_status(status, runs) == ours
        assert api_status(status.value, [r.value for r in runs]) == ours  # GraphQL gives the same strings
        bf = type("Backfill", (), {"status": status})()
        assert tracking.backfill_status(bf, runs) == ours  # type: ignore[arg-type]
