"""``maintenance/retention``: the daily retention run (see plan.py for why a job and not a TTL index)."""

from collections.abc import Mapping, Sequence

from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    asset,
)
from dagster._core.storage.partition_status_cache import AssetPartitionStatus
from pydantic import Field

from dm_assets.clock import run_time_ms
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, SYMBOLS_PARTITIONS_NAME, partition_key
from dm_assets.retention import plan
from dm_resources.contracts import MAINTENANCE_GROUP, RETENTION_PATH
from dm_resources.resources import MongoResource
from dm_resources.settings import get_settings

RETENTION_KEY = AssetKey(RETENTION_PATH)


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
    group_name=MAINTENANCE_GROUP,
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
        run_time_ms(context),
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


RETENTION_ASSETS = [retention]
