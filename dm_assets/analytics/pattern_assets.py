"""The pattern search's precomputed input: ``analytics/pattern_series``, one partition per symbol.

Each run rewrites, for every interval of :data:`PATTERN_INTERVALS`, the chunks of the symbol's dense
close series that changed (``dm_assets/analytics/pattern_series.py``); ``GET /analysis/similar``
reads them and appends the candles written since. It runs on the analytics cadence through its
own schedule (``analytics/schedules.py``; the analytics schedule's runs name their assets, this
one is not among them).
"""

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from dm_assets.analytics.assets import AnalyticsConfig
from dm_assets.analytics.pattern_series import COLLECTION, PATTERN_INTERVALS, write_series
from dm_assets.analytics.patterns import HISTORY_DAYS
from dm_assets.candles.assets import candles_key
from dm_assets.partitions import SYMBOL_DIM, SYMBOL_PARTITIONS
from dm_resources.contracts import ANALYTICS_GROUP, analytics_asset_path
from dm_resources.resources import MongoResource

PATTERN_SERIES_KEY = AssetKey(analytics_asset_path("pattern_series"))
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
    kinds={"numpy"},
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
