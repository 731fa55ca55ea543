"""The order-book asset (date × symbol), its continuity check and its 5-minute schedule. Thin: see build.py."""

import datetime as dt
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    asset,
    define_asset_job,
)
from pydantic import Field

from dm_assets.orderbook import build
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, partition_key
from dm_assets.partitions import split_key as _split
from dm_assets.raw.assets import raw_key
from dm_assets.schedules import per_symbol_schedule
from dm_resources.binance import BinanceError
from dm_resources.contracts import ORDERBOOK_SNAPSHOTS_PATH, now_ms
from dm_resources.resources import BinanceResource, MetadataResource, MongoResource

ORDERBOOK_GROUP = "orderbook"
ORDERBOOK_KEY = AssetKey(ORDERBOOK_SNAPSHOTS_PATH)
ORDERBOOK_ASSET_KEY = "/".join(ORDERBOOK_KEY.path)


class OrderbookConfig(Config):
    """Knobs an operator may change per run (the defaults are what the API and analytics expect)."""

    take_snapshot: bool = Field(
        default=True, description="On the current day, fetch a REST depth snapshot first (a re-sync point)."
    )
    depth: int = Field(default=build.DEFAULT_DEPTH, ge=1, le=1000, description="Levels per side stored.")
    cadence_s: int = Field(default=build.DEFAULT_CADENCE_MS // 1000, ge=1, le=3600, description="Seconds per row.")


@asset(
    key=ORDERBOOK_KEY,
    partitions_def=DATE_SYMBOL_PARTITIONS,
    deps=[raw_key("depth_updates")],
    group_name=ORDERBOOK_GROUP,
    kinds={"mongodb"},
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=10),
    check_specs=[
        AssetCheckSpec(
            build.CHECK_NAME,
            asset=ORDERBOOK_KEY,
            description="Fails when the rebuild met a continuity break (pu != previous u), a crossed book, a "
            "snapshot the stored diffs cannot continue, or any time without a valid book; ERROR above 5 % of the "
            "window without a book, else WARN.",
        )
    ],
    tags={"dm/layer": "orderbook"},
    description=(
        "Top-20 order book every 10 s for one UTC day of one symbol, in MongoDB `orderbook_snapshots`, rebuilt "
        "with Binance's procedure from REST snapshots (`depth_snapshots`, taken by this asset on the current day) "
        "and the stored `depthUpdate` diffs: events before the snapshot dropped, the first with U <= "
        "lastUpdateId <= u applied, then pu == previous u required; a break invalidates the book until the next "
        "snapshot. Only proven books are stored. Breaks, re-syncs and time without a book go to the check, "
        "`audit_logs` and `health_metrics` (interval `book`)."
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
    now = now_ms()
    days: list[build.BookDay] = []
    for pk in context.partition_keys:
        day, symbol = _split(pk)
        start, end = build.day_bounds_ms(day)
        taken, error = None, None
        if config.take_snapshot and start <= now < end:
            try:
                taken = build.take_snapshot(binance.get_client(), store, symbol)
            except BinanceError as exc:  # the rebuild still runs on the snapshots already stored
                error = str(exc)
                context.log.warning(f"{pk}: no depth snapshot: {exc}")
        b = build.build_orderbook_day(
            store, symbol, day, now=now, cadence_ms=config.cadence_s * 1000, depth=config.depth
        )
        b.snapshot_taken, b.snapshot_error = taken, error
        context.log.info(b.message())
        days.append(b)
    run_id = context.run.run_id
    meta.record_audit([b.audit_row(ORDERBOOK_ASSET_KEY, run_id) for b in days])
    meta.upsert_health([b.health_row(run_id) for b in days if b.window_ms > 0])
    failed = [b for b in days if not b.passed]
    worst = "ERROR" if any(b.severity == "ERROR" for b in failed) else "WARN"
    check = AssetCheckResult(
        check_name=build.CHECK_NAME,
        asset_key=ORDERBOOK_KEY,
        passed=not failed,
        severity=AssetCheckSeverity.ERROR if worst == "ERROR" else AssetCheckSeverity.WARN,
        description="; ".join(b.message() for b in (failed or days))[:2000],
        metadata={
            "breaks": sum(b.stats.breaks for b in days),
            "resyncs": sum(b.stats.resyncs for b in days),
            "crossed": sum(b.stats.crossed for b in days),
            "snapshots_unusable": sum(b.stats.snapshots_unusable for b in days),
            "invalid_seconds": sum(b.stats.invalid_ms for b in days) / 1000,
        },
    )
    meta_out: dict[str, Any] = {
        "partitions": len(days),
        "documents": sum(b.documents for b in days),
        "upserted": sum(b.upserted for b in days),
        "modified": sum(b.modified for b in days),
        "breaks": sum(b.stats.breaks for b in days),
        "resyncs": sum(b.stats.resyncs for b in days),
        "invalid_seconds": sum(b.stats.invalid_ms for b in days) / 1000,
    }
    if len(days) == 1:
        meta_out["detail"] = MetadataValue.json(days[0].as_metadata())
    return MaterializeResult(metadata=meta_out, check_results=[check])


orderbook_job = define_asset_job(
    "orderbook_job",
    selection=[ORDERBOOK_KEY],
    description="Rebuild today's order book (and take a REST depth snapshot) per symbol.",
    tags={"dm/job": "orderbook"},
)


# Yesterday's last minutes are proven only by diffs after midnight: the first ticks of a day
# rebuild yesterday once more so its tail is written and its health is final.
FINALIZE_AFTER_MIDNIGHT = dt.timedelta(minutes=10)


def orderbook_requests(symbols: list[str], when: dt.datetime) -> list[RunRequest]:
    when = when.astimezone(dt.UTC)
    day = when.date()
    days = [day]
    if when - dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) < FINALIZE_AFTER_MIDNIGHT:
        days.insert(0, day - dt.timedelta(days=1))
    tick = when.strftime("%Y%m%dT%H%M")
    return [
        RunRequest(
            run_key=f"orderbook:{s}:{d.isoformat()}:{tick}",
            partition_key=partition_key(d, s),
            tags={"dm/origin": "schedule"},
        )
        for d in days
        for s in symbols
    ]


orderbook_schedule = per_symbol_schedule(
    "orderbook_schedule",
    orderbook_job,
    "*/5 * * * *",
    "Every 5 minutes: a REST depth snapshot and a rebuild of today's book for every symbol.",
    orderbook_requests,
)


ORDERBOOK_ASSETS = [orderbook_snapshots]
