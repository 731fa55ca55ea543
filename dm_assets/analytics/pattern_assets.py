"""The pattern search's precomputed input: ``analytics/pattern_series``, one partition per symbol.

Each run rewrites, for every interval of :data:`PATTERN_INTERVALS`, the chunks of the symbol's dense
close series that changed (``dm_assets/analytics/pattern_series.py``); ``GET /analysis/similar``
reads them and appends the candles written since. It runs on the analytics cadence through its
own schedule (the analytics schedule's runs name their assets, this one is not among them).
"""

import datetime as dt

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    RunRequest,
    asset,
    define_asset_job,
)

from dm_assets.analytics.assets import ANALYTICS_GROUP, ANALYTICS_PREFIX, AnalyticsConfig
from dm_assets.analytics.pattern_series import COLLECTION, PATTERN_INTERVALS, write_series
from dm_assets.analytics.patterns import HISTORY_DAYS
from dm_assets.analytics.schedules import analytics_schedule
from dm_assets.candles.assets import candles_key
from dm_assets.partitions import SYMBOL_DIM, SYMBOL_PARTITIONS
from dm_assets.schedules import per_symbol_schedule
from dm_resources.resources import MongoResource

PATTERN_SERIES_KEY = AssetKey([ANALYTICS_PREFIX, "pattern_series"])
PATTERN_OP = "analytics__pattern_series"

_HISTORY = ", ".join(f"{iv} {HISTORY_DAYS[iv]} days" for iv in PATTERN_INTERVALS)


@asset(
    key=PATTERN_SERIES_KEY,
    deps=[
        AssetDep(candles_key(iv), partition_mapping=MultiToSingleDimensionPartitionMapping(SYMBOL_DIM))
        for iv in PATTERN_INTERVALS
    ],
    partitions_def=SYMBOL_PARTITIONS,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=25),
    group_name=ANALYTICS_GROUP,
    kinds={"mongodb", "numpy"},
    tags={"dm/layer": "analytics"},
    metadata={"collection": COLLECTION},
    description=(
        "Dense close-price series of one symbol per interval (missing and flagged bars as NaN, chunks of 43,200 "
        f"bars) over the pattern search's history ({_HISTORY}), written to MongoDB `{COLLECTION}`; "
        "GET /analysis/similar reads it and appends the candles written since the last run."
    ),
)
def pattern_series(context: AssetExecutionContext, config: AnalyticsConfig, mongo: MongoResource) -> MaterializeResult:
    store = mongo.get_store()
    as_of = config.resolve()
    rows = []
    written = 0
    for symbol in context.partition_keys:
        for iv in PATTERN_INTERVALS:
            res = write_series(store, symbol, iv, as_of)
            written += res.written
            rows.append(f"| {symbol} | {iv} | {res.bars} | {res.chunks} | {res.written} |")
    table = "\n".join(["| symbol | interval | bars | chunks | rewritten |", "|---|---|---|---|---|", *rows])
    return MaterializeResult(metadata={"chunks_rewritten": written, "summary": MetadataValue.md(table)})


pattern_series_job = define_asset_job(
    "pattern_series_job",
    selection=AssetSelection.assets(PATTERN_SERIES_KEY),
    description="The pattern search's dense close series per symbol, as of the run's as_of_ms.",
    tags={"dm/job": "pattern_series"},
)


def pattern_requests(symbols: list[str], as_of: dt.datetime) -> list[RunRequest]:

    ms = int(as_of.timestamp() * 1000)
    tick = as_of.astimezone(dt.UTC).strftime("%Y%m%dT%H%M")
    return [
        RunRequest(
            run_key=f"pattern_series:{s}:{tick}",
            partition_key=s,
            run_config={"ops": {PATTERN_OP: {"config": {"as_of_ms": ms}}}},
            tags={"dm/origin": "schedule"},
        )
        for s in symbols
    ]


pattern_series_schedule = per_symbol_schedule(
    "pattern_series_schedule",
    pattern_series_job,
    analytics_schedule.cron_schedule if isinstance(analytics_schedule.cron_schedule, str) else "*/15 * * * *",
    "On the analytics cadence: each symbol's pattern-search series as of the tick.",
    pattern_requests,
)
