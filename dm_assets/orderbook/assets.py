"""The order-book asset (date × symbol). Thin: the replay is book.py, the store glue build.py."""

from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from dm_assets.clock import run_time_ms
from dm_assets.orderbook import build
from dm_assets.orderbook.book import DEFAULT_CADENCE_MS, DEFAULT_DEPTH, Snapshot
from dm_assets.orderbook.checks import CONTINUITY_SPEC, continuity_result
from dm_assets.orderbook.report import BookDay
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, day_bounds_ms, split_key
from dm_resources.binance import BinanceError
from dm_resources.contracts import ORDERBOOK_GROUP, ORDERBOOK_SNAPSHOTS_PATH, raw_asset_path
from dm_resources.mongo import MongoStore
from dm_resources.resources import BinanceResource, MetadataResource, MongoResource

ORDERBOOK_KEY = AssetKey(ORDERBOOK_SNAPSHOTS_PATH)
ORDERBOOK_ASSET_KEY = "/".join(ORDERBOOK_SNAPSHOTS_PATH)


class OrderbookConfig(Config):
    """Knobs an operator may change per run (the defaults are what the API and analytics expect)."""

    take_snapshot: bool = Field(
        default=True, description="On the current day, fetch a REST depth snapshot first (a re-sync point)."
    )
    depth: int = Field(default=DEFAULT_DEPTH, ge=1, le=1000, description="Levels per side stored.")
    cadence_s: int = Field(default=DEFAULT_CADENCE_MS // 1000, ge=1, le=3600, description="Seconds per row.")
    full_replay: bool = Field(
        default=False,
        description="Replay the day from its first snapshot instead of continuing from the stored checkpoint.",
    )


def _snapshot(context: AssetExecutionContext, binance: BinanceResource, store: MongoStore, symbol: str) -> Any:
    """(header of the snapshot taken, error): the rebuild still runs on the snapshots already stored."""
    try:
        return build.take_snapshot(binance.get_client(), store, symbol), None
    except BinanceError as exc:
        context.log.warning(f"{symbol}: no depth snapshot: {exc}")
        return None, str(exc)


def _metadata(days: list[BookDay]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "partitions": len(days),
        "documents": sum(b.documents for b in days),
        "upserted": sum(b.upserted for b in days),
        "modified": sum(b.modified for b in days),
        "diffs_read": sum(b.diffs_read for b in days),
        "resumed": sum(1 for b in days if b.replay != "full"),
        "breaks": sum(b.stats.breaks for b in days),
        "resyncs": sum(b.stats.resyncs for b in days),
        "invalid_seconds": sum(b.stats.invalid_ms for b in days) / 1000,
    }
    if len(days) == 1:
        meta["detail"] = MetadataValue.json(days[0].as_metadata())
    return meta


@asset(
    key=ORDERBOOK_KEY,
    partitions_def=DATE_SYMBOL_PARTITIONS,
    deps=[AssetKey(raw_asset_path("depth_updates"))],
    group_name=ORDERBOOK_GROUP,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=10),
    check_specs=[CONTINUITY_SPEC],
    description=(
        "Top-20 order book every 10 s for one UTC day of one symbol, in MongoDB `orderbook_snapshots`, rebuilt "
        "with Binance's procedure from REST snapshots (`depth_snapshots`, taken by this asset on the current day) "
        "and the stored `depthUpdate` diffs: events before the snapshot dropped, the first with U <= "
        "lastUpdateId <= u applied, then pu == previous u required; a break invalidates the book until the next "
        "snapshot. Only proven books are stored. Each run continues from the checkpoint the last one stored "
        "(`orderbook_checkpoints`), so it costs the diffs since then. Breaks, re-syncs and time without a book go "
        "to the check, `audit_logs` and `health_metrics` (interval `book`)."
    ),
)
def orderbook_snapshots(
    context: AssetExecutionContext,
    config: OrderbookConfig,
    mongo: MongoResource,
    metadata: MetadataResource,
    binance: BinanceResource,
) -> MaterializeResult:
    store, meta = mongo.get_store(), metadata.get_store()
    now, run_id = run_time_ms(context), context.run.run_id
    days: list[BookDay] = []
    for pk in context.partition_keys:
        day, symbol = split_key(pk)
        start, end = day_bounds_ms(day)
        taken: Snapshot | None = None
        error = None
        if config.take_snapshot and start <= now < end:
            taken, error = _snapshot(context, binance, store, symbol)
        b = build.build_orderbook_day(
            store,
            symbol,
            day,
            now=now,
            cadence_ms=config.cadence_s * 1000,
            depth=config.depth,
            use_checkpoint=not config.full_replay,
            run_id=run_id,
            own_snapshot=taken,
        )
        b.snapshot_taken, b.snapshot_error = taken.last_update_id if taken else None, error
        context.log.info(f"{b.replay}, {b.diffs_read} diffs read: {b.message()}")
        days.append(b)
    audit = [b.audit_row(ORDERBOOK_ASSET_KEY, run_id) for b in days]
    audit += [r for b in days if (r := b.mismatch_audit_row(ORDERBOOK_ASSET_KEY, run_id)) is not None]
    meta.record_audit(audit)
    meta.upsert_health([b.health_row(run_id) for b in days if b.window_ms > 0])
    return MaterializeResult(metadata=_metadata(days), check_results=[continuity_result(days)])


ORDERBOOK_ASSETS = [orderbook_snapshots]
