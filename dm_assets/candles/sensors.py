"""Sensors: keep the symbol partitions in step with the data; request runs for gapped partitions."""

from __future__ import annotations

import datetime as dt
import json
import time

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from dm_assets.candles import gaps
from dm_assets.candles.jobs import candles_job
from dm_assets.partitions import AUTOMATION_STATUS, SYMBOL_PARTITIONS, SYMBOLS_PARTITIONS_NAME, partition_key
from dm_resources.resources import MetadataResource, MongoResource
from dm_resources.run_coordinator import SYMBOL_TAG
from dm_resources.settings import get_settings

# Sensor evaluations time out after 60 s: stop scanning well before that and resume
# from the cursor on the next tick.
SCAN_BUDGET_SECONDS = 20.0
MAX_PARTITIONS_PER_TICK = 30
LOOKBACK_DAYS = 3


def discover_symbols(mongo: MongoResource) -> list[str]:
    """Symbols configured in DM_SYMBOLS plus every symbol present in the raw data."""
    store = mongo.get_store()
    found = set(get_settings().symbols)
    for name in ("klines", "agg_trades"):
        found.update(store.symbols(name))
    return sorted(found)


@sensor(
    name="symbol_discovery_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus(AUTOMATION_STATUS),
    description="Adds a symbol partition for every symbol in DM_SYMBOLS or seen in raw klines/trades.",
)
def symbol_discovery_sensor(context: SensorEvaluationContext, mongo: MongoResource) -> SensorResult | SkipReason:
    known = set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    new = [s for s in discover_symbols(mongo) if s not in known]
    if not new:
        return SkipReason(f"{len(known)} symbols, none new")
    context.log.info(f"adding symbol partitions: {new}")
    return SensorResult(dynamic_partitions_requests=[SYMBOL_PARTITIONS.build_add_request(new)])


def _scan_list(context: SensorEvaluationContext, today: dt.date) -> list[tuple[str, str]]:
    symbols = sorted(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    days = gaps.days_to_scan(today, LOOKBACK_DAYS, get_settings().partition_start)
    return [(d, s) for d in days for s in symbols]


@sensor(
    name="gap_sensor",
    job=candles_job,
    minimum_interval_seconds=120,
    default_status=DefaultSensorStatus(AUTOMATION_STATUS),
    description=(
        f"Scans the last {LOOKBACK_DAYS} days × all symbols for minutes with no candle that are not confirmed "
        "missing, and for flagged minutes (bad print, impossible OHLC, source disagreement) not yet re-checked "
        "against REST, and requests a candles run for exactly those partitions (the run fills the holes and "
        "repairs the flagged minutes from REST; run key = partition + hole + attempts + suspects, so an unchanged "
        "state is not asked for twice). Resumes from its cursor within the sensor time budget."
    ),
)
def gap_sensor(context: SensorEvaluationContext, mongo: MongoResource, metadata: MetadataResource) -> SensorResult:
    now = int(time.time() * 1000)
    today = dt.datetime.fromtimestamp(now / 1000, tz=dt.UTC).date()
    scan = _scan_list(context, today)
    cursor = json.loads(context.cursor) if context.cursor else {}
    offset = int(cursor.get("offset", 0))
    if offset >= len(scan):
        offset = 0
    store, meta = mongo.get_store(), metadata.get_store()
    requests: list[RunRequest] = []
    started = time.monotonic()
    scanned = 0
    while offset < len(scan) and scanned < MAX_PARTITIONS_PER_TICK:
        if time.monotonic() - started > SCAN_BUDGET_SECONDS:
            break
        day, symbol = scan[offset]
        gap, missing_times = gaps.partition_gap(store, meta, symbol, day, now)
        if gap.needs_run:
            requests.append(
                RunRequest(
                    run_key=gap.run_key(missing_times),
                    partition_key=partition_key(day, symbol),
                    tags={
                        "dm/origin": "sensor",
                        SYMBOL_TAG: symbol,
                        "dm/missing_minutes": str(gap.missing),
                        "dm/suspect_minutes": str(gap.suspect),
                    },
                )
            )
        offset += 1
        scanned += 1
    next_offset = 0 if offset >= len(scan) else offset
    new_cursor = json.dumps({"offset": next_offset, "last_scan_ms": now, "scanned": scanned})
    if not requests:
        return SensorResult(skip_reason=f"scanned {scanned} partitions, no gaps", cursor=new_cursor)
    return SensorResult(run_requests=requests, cursor=new_cursor)
