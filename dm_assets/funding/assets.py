"""``funding/funding_history`` (date × symbol), beside the candles: settled funding from Binance REST."""

from typing import Any

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from dm_assets.candles.assets import BACKFILL_POLICY
from dm_assets.funding import build
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, split_key
from dm_resources.contracts import FUNDING_GROUP, FUNDING_HISTORY_PATH
from dm_resources.resources import BinanceResource, MongoResource

FUNDING_HISTORY_KEY = AssetKey(FUNDING_HISTORY_PATH)


@asset(
    key=FUNDING_HISTORY_KEY,
    partitions_def=DATE_SYMBOL_PARTITIONS,
    group_name=FUNDING_GROUP,
    backfill_policy=BACKFILL_POLICY,
    description=(
        "Settled funding rates of one UTC day of one symbol from Binance REST (`GET /fapi/v1/fundingRate`, "
        "paged by time, within its 500 requests / 5 min budget) into MongoDB `funding_rates` (source rest), "
        "replacing the live estimate from markPriceUpdate for the same settlement. Consecutive days of a run "
        "share requests. Funding intervals (8h, 4h, 1h, changing over time) are read from the settlement times."
    ),
)
def funding_history(
    context: AssetExecutionContext, mongo: MongoResource, binance: BinanceResource
) -> MaterializeResult:
    store, client = mongo.get_store(), binance.get_client()
    by_symbol: dict[str, list[str]] = {}
    for pk in context.partition_keys:
        day, symbol = split_key(pk)
        by_symbol.setdefault(symbol, []).append(day)
    fills = []
    for symbol, days in sorted(by_symbol.items()):
        f = build.fill_funding(store, client, symbol, days)
        context.log.info(f"{symbol}: {f.as_metadata()}")
        fills.append(f)
    meta: dict[str, Any] = {
        "partitions": len(context.partition_keys),
        "fetched": sum(f.fetched for f in fills),
        "inserted": sum(f.inserted for f in fills),
        "replaced": sum(f.replaced for f in fills),
        "unchanged": sum(f.unchanged for f in fills),
        "requests": sum(f.requests for f in fills),
        "intervals": MetadataValue.json({f.symbol: f.intervals for f in fills}),
    }
    return MaterializeResult(metadata=meta)


FUNDING_ASSETS = [funding_history]
