"""Analytics assets: latest market analytics per symbol, and cross-symbol correlation, in MongoDB ``analytics``.

Partitioning, and why: the per-symbol kinds are partitioned by **symbol** (the dynamic
``symbols`` partitions) and computed over a trailing window as of a time (default now,
see :mod:`dm_assets.analytics.build`). Downstream services read the *latest* analytics,
not per-day history, and a trailing 30-day trend crosses day boundaries, so a date
dimension would only multiply runs; the symbol dimension keeps what matters: a new
symbol is computed on its own, a failure is isolated to one symbol, and the UI shows
each symbol's last materialization. Their dependency on the date × symbol candles is
mapped on the symbol dimension (symbol X reads candles of X, whatever the day).
Correlation spans every symbol, so it is one unpartitioned asset.

The five per-symbol kinds are one ``multi_asset`` (subsettable) so that a run reads each
symbol's candles once for volatility, volume and trend; each kind is still an asset of
its own in the graph, with its own upstreams.
"""

import datetime as dt
from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    RunConfig,
    asset,
    multi_asset,
)
from pydantic import Field

from dm_assets.analytics import build
from dm_assets.partitions import SYMBOL_DIM, SYMBOL_PARTITIONS, SYMBOLS_PARTITIONS_NAME
from dm_assets.raw.assets import raw_key
from dm_resources.candle_store import bump_analytics_versions
from dm_resources.contracts import (
    ANALYTICS_GROUP,
    FUNDING_HISTORY_PATH,
    ORDERBOOK_SNAPSHOTS_PATH,
    analytics_asset_path,
    candle_asset_path,
    now_ms,
)
from dm_resources.resources import MongoResource

SYMBOL_OP = "symbol_analytics"
CORRELATION_OP = "analytics__correlation"
# Each partition is small (a few thousand candles and quotes): several per run amortise run start-up.
_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=25)


def analytics_key(kind: str) -> AssetKey:
    return AssetKey(analytics_asset_path(kind))


def candles_key(interval: str) -> AssetKey:
    return AssetKey(candle_asset_path(interval))


def _candle_deps() -> list[AssetDep]:
    # Symbol X of an analytics asset reads candles of X: all date partitions of that symbol.
    mapping = MultiToSingleDimensionPartitionMapping(partition_dimension_name=SYMBOL_DIM)
    return [AssetDep(candles_key(iv), partition_mapping=mapping) for iv in build.CANDLE_INTERVALS]


def _windows(iv: str) -> str:
    spec = next(s for s in build.CANDLE_SPECS if s.interval == iv)
    return f"{iv} candles over the last {spec.lookback_ms // build.DAY_MS} day(s)"


_OVER = " and ".join(_windows(iv) for iv in build.CANDLE_INTERVALS)

DESCRIPTIONS: dict[str, str] = {
    "volatility": (
        f"Realized volatility of one symbol (close-to-close, Parkinson, Garman–Klass, Rogers–Satchell, Yang–Zhang, "
        f"per bar and annualized, plus vol-of-vol) from {_OVER}, written to MongoDB `analytics` (kind volatility)."
    ),
    "volume": (
        f"Volume analytics of one symbol (totals, SMA/EMA, spike ratio, taker buy/sell flow, VWAP) from {_OVER}, "
        "written to MongoDB `analytics` (kind volume)."
    ),
    "trend": (
        f"Trend state of one symbol (SMA/EMA 20/50 and their latest {build.MAX_CROSSOVERS} crossovers, log-price "
        f"regression slope, horizon returns, ADX) from {_OVER}, written to MongoDB `analytics` (kind trend)."
    ),
    "spread": (
        "Bid–ask spread statistics in basis points (mean, median, p95, time-weighted) from the last hour of book "
        "tickers, with order-book imbalance and the book's own spread from the last hour of the rebuilt order "
        "book (orderbook_snapshots; depth diffs only when no book exists), written to MongoDB `analytics` "
        "(kind spread, interval 1h)."
    ),
    "funding": (
        "Funding-rate statistics of one symbol from the last 30 days of settled funding rates, annualized by the "
        "funding interval observed in the data, plus the predicted rate from the latest mark prices, written to "
        "MongoDB `analytics` (kind funding, interval 30d)."
    ),
    "correlation": (
        f"Cross-symbol correlation of log returns over every symbol partition from {_OVER} (matrix and graph of "
        "pairs with |ρ| ≥ 0.7 per window), written to MongoDB `analytics` (symbol *, kind correlation)."
    ),
}

_DEPS: dict[str, list[AssetDep]] = {
    "volatility": _candle_deps(),
    "volume": _candle_deps(),
    "trend": _candle_deps(),
    "spread": [
        AssetDep(raw_key("book_tickers")),
        AssetDep(raw_key("depth_updates")),
        # The rebuilt book, every date of the symbol (see _candle_deps).
        AssetDep(
            AssetKey(ORDERBOOK_SNAPSHOTS_PATH),
            partition_mapping=MultiToSingleDimensionPartitionMapping(partition_dimension_name=SYMBOL_DIM),
        ),
    ],
    "funding": [
        AssetDep(raw_key("funding_rates")),
        AssetDep(raw_key("mark_prices")),
        # Settled history from REST, every date of the symbol (see _candle_deps).
        AssetDep(
            AssetKey(FUNDING_HISTORY_PATH),
            partition_mapping=MultiToSingleDimensionPartitionMapping(partition_dimension_name=SYMBOL_DIM),
        ),
    ],
}

SYMBOL_SPECS = [
    AssetSpec(
        key=analytics_key(kind),
        deps=_DEPS[kind],
        description=DESCRIPTIONS[kind],
        group_name=ANALYTICS_GROUP,
        metadata={"collection": "analytics", "kind": kind},
        skippable=True,
    )
    for kind in build.SYMBOL_KINDS
]
SYMBOL_KEYS = [s.key for s in SYMBOL_SPECS]


class AnalyticsConfig(Config):
    """When the analytics are computed as of; the schedule passes its tick so a re-run recomputes the same."""

    as_of_ms: int | None = Field(
        default=None,
        description="Epoch ms UTC the trailing windows end at (closed bars only); default: now.",
    )

    def resolve(self) -> int:
        return int(self.as_of_ms) if self.as_of_ms is not None else now_ms()


def run_config(as_of_ms: int | None, *, symbol_assets: bool = True, correlation: bool = True) -> RunConfig:
    """Run config for the selected analytics ops (Dagster refuses config for ops not in the run)."""
    ops: dict[str, AnalyticsConfig] = {}
    if symbol_assets:
        ops[SYMBOL_OP] = AnalyticsConfig(as_of_ms=as_of_ms)
    if correlation:
        ops[CORRELATION_OP] = AnalyticsConfig(as_of_ms=as_of_ms)
    return RunConfig(ops=ops)


def _metadata(docs: list[dict], as_of: int, upserted: int, modified: int) -> dict[str, Any]:
    return {
        "as_of": dt.datetime.fromtimestamp(as_of / 1000, tz=dt.UTC).isoformat(),
        "documents": len(docs),
        "upserted": upserted,
        "modified": modified,
        "summary": MetadataValue.md(build.summary_markdown(docs)),
    }


@multi_asset(
    name=SYMBOL_OP,
    specs=SYMBOL_SPECS,
    partitions_def=SYMBOL_PARTITIONS,
    backfill_policy=_BACKFILL_POLICY,
    can_subset=True,
    description="Per-symbol analytics (volatility, volume, trend, spread, funding) as of a time.",
)
def symbol_analytics(
    context: AssetExecutionContext, config: AnalyticsConfig, mongo: MongoResource
) -> Iterator[MaterializeResult]:
    store = mongo.get_store()
    as_of = config.resolve()
    kinds = [k for k in build.SYMBOL_KINDS if analytics_key(k) in context.selected_asset_keys]
    by_kind: dict[str, list[dict]] = {k: [] for k in kinds}
    for symbol in context.partition_keys:
        docs = build.symbol_documents(store, symbol, as_of, kinds)
        context.log.info(f"{symbol}: {len(docs)} analytics documents as of {as_of}")
        for d in docs:
            by_kind[d["kind"]].append(d)
    for kind in kinds:
        docs = by_kind[kind]
        res = store.upsert("analytics", docs)
        bump_analytics_versions(store, docs)  # the API cache invalidates on it
        yield MaterializeResult(
            asset_key=analytics_key(kind), metadata=_metadata(docs, as_of, res.upserted, res.modified)
        )


@asset(
    key=analytics_key("correlation"),
    deps=[AssetDep(candles_key(iv)) for iv in build.CANDLE_INTERVALS],
    group_name=ANALYTICS_GROUP,
    metadata={"collection": "analytics", "kind": "correlation"},
    description=DESCRIPTIONS["correlation"],
)
def correlation(context: AssetExecutionContext, config: AnalyticsConfig, mongo: MongoResource) -> MaterializeResult:
    store = mongo.get_store()
    as_of = config.resolve()
    symbols = context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME)
    docs = build.correlation_documents(store, symbols, as_of)
    res = store.upsert("analytics", docs)
    bump_analytics_versions(store, docs)  # the API cache invalidates on it
    meta = _metadata(docs, as_of, res.upserted, res.modified)
    meta["symbols"] = len(symbols)
    return MaterializeResult(metadata=meta)


ANALYTICS_ASSETS = [symbol_analytics, correlation]
ANALYTICS_KEYS = [*SYMBOL_KEYS, analytics_key("correlation")]
