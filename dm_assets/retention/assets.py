"""``maintenance/retention``: the daily retention run (see plan.py for why a job and not a TTL index)."""

import datetime as dt
from collections.abc import Mapping, Sequence

from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    DagsterInstance,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
)
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from pydantic import Field

from dm_assets.partitions import AUTOMATION_STATUS, DATE_SYMBOL_PARTITIONS, SYMBOLS_PARTITIONS_NAME, partition_key
from dm_assets.retention import plan
from dm_resources.resources import MongoResource
from dm_resources.settings import get_settings

RETENTION_KEY = AssetKey(["maintenance", "retention"])


class RetentionConfig(Config):
    dry_run: bool = Field(default=False, description="Count what would be deleted, delete nothing.")


def partition_status(instance: DagsterInstance, symbols_known: set[str]) -> plan.StatusLookup:
    """A lookup of which days' consuming partitions are materialized (failed, running or never run: pending)."""

    def status(consumer: str, symbol: str, days: Sequence[str]) -> Mapping[str, bool]:
        if not days or symbol not in symbols_known:
            return dict.fromkeys(days, False)
        keys = [str(partition_key(d, symbol)) for d in days]
        found = instance.get_status_by_partition(AssetKey(consumer.split("/")), keys, DATE_SYMBOL_PARTITIONS)
        found = found or {}
        return {d: found.get(k) == AssetPartitionStatus.MATERIALIZED for d, k in zip(days, keys, strict=True)}

    return status


@asset(
    key=RETENTION_KEY,
    group_name="maintenance",
    kinds={"mongodb"},
    tags={"dm/layer": "maintenance"},
    description=(
        "Deletes whole UTC days older than each collection's retention (DM_RETENTION_*_DAYS) from agg_trades, "
        "depth_updates, depth_snapshots, book_tickers, tickers, mark_prices and analytics, except days whose "
        "candle or order-book partition is not materialized yet (pending, failed or running). Reports what it "
        "deleted and what it kept."
    ),
)
def retention(context: AssetExecutionContext, config: RetentionConfig, mongo: MongoResource) -> MaterializeResult:
    settings = get_settings()
    symbols = set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    reports = plan.apply_retention(
        mongo.get_store(),
        plan.policies(settings),
        symbols | set(settings.symbols),
        int(dt.datetime.now(dt.UTC).timestamp() * 1000),
        settings.partition_start,
        partition_status(context.instance, symbols),
        dry_run=config.dry_run,
    )
    for r in reports:
        context.log.info(str(r.as_dict()))
    return MaterializeResult(
        metadata={
            "dry_run": config.dry_run,
            "deleted": sum(r.deleted for r in reports),
            "kept_pending_days": sum(len(d) for r in reports for d in r.kept_pending.values()),
            "collections": MetadataValue.json([r.as_dict() for r in reports]),
        }
    )


retention_job = define_asset_job(
    "retention_job", selection=[RETENTION_KEY], description="Daily retention of the high-volume collections."
)
retention_schedule = ScheduleDefinition(
    name="retention_schedule",
    job=retention_job,
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus(AUTOMATION_STATUS),
    description="Daily at 03:17 UTC: delete raw and analytics days past their retention (never pending ones).",
)

RETENTION_ASSETS = [retention]
