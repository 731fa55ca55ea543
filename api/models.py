"""Response and request models: the typed contract published at ``/openapi.json``.

Prices and quantities of raw data are strings (BSON Decimal128 rendered in full) so a
client never loses a digit to float parsing; candles and analytics are float64 in the
store and are floats here. Times are int epoch milliseconds UTC, as stored.

Hot routes serialize plain dicts with orjson instead of building these models per row
(measured: model construction cost more than the store read for 1,000 candles); the
test-suite validates every response body against these models, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from dm_resources.metadata.schemas import (
    BackfillJobRecord,
    DatasetRecord,
    HealthMetricRecord,
    LineageView,
    SchemaField,
)

__all__ = [
    "BackfillJobRecord",
    "DatasetRecord",
    "HealthMetricRecord",
    "LineageView",
    "SchemaField",
]

T = TypeVar("T")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorItem(_Model):
    """FastAPI's validation-error shape, which the API's own errors follow too."""

    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ErrorResponse(_Model):
    """Every 4xx/5xx this API produces itself: which parameter, and why."""

    detail: list[ErrorItem] | str


class Page(_Model, Generic[T]):
    """One page of rows in ascending time; ``next`` is the URL of the following page, if any."""

    pair: str
    count: int
    rows: list[T]
    next: str | None = Field(default=None, description="URL of the next page (start = last time + 1) or null")


# --- data ------------------------------------------------------------------------------------------


class Candle(_Model):
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float | None = None
    taker_buy_volume: float | None = None
    taker_buy_quote_volume: float | None = None
    trades: int | None = None
    source: str | None = None
    flags: list[str] = Field(
        default_factory=list,
        description=(
            "Empty for a clean candle. bad_print / ohlc_impossible / source_disagreement: the candle is suspect; "
            "with verified: the exchange's REST was asked again and had nothing better, so it is kept as "
            "suspect; provisional: a derived candle over minutes the exchange says it lacks, not yet confirmed."
        ),
    )


class CandlesPage(Page[Candle]):
    period: str


class Trade(_Model):
    agg_id: int
    price: str
    qty: str
    first_trade_id: int | None = None
    last_trade_id: int | None = None
    trade_time: int
    event_time: int | None = None
    buyer_is_maker: bool | None = None


class TradesPage(Page[Trade]):
    pass


class DepthUpdate(_Model):
    event_time: int
    transaction_time: int | None = None
    first_update_id: int | None = None
    final_update_id: int
    prev_final_update_id: int | None = None
    bids: list[list[str]]
    asks: list[list[str]]


class DepthPage(Page[DepthUpdate]):
    pass


class FundingRate(_Model):
    funding_time: int
    funding_rate: str | None = None
    mark_price: str | None = None
    event_time: int | None = None


class MarkPrice(_Model):
    event_time: int
    mark_price: str | None = None
    index_price: str | None = None
    estimated_settle_price: str | None = None
    funding_rate: str | None = None
    next_funding_time: int | None = None


class FundingPage(Page[FundingRate | MarkPrice]):
    source: Literal["funding_rates", "mark_prices"]


# --- analytics ---------------------------------------------------------------------------------------


class AnalyticsResult(_Model):
    """One analytics document; ``values`` is served as the analytics assets wrote it."""

    model_config = ConfigDict(extra="allow")

    symbol: str
    kind: str
    interval: str
    window_end: int
    values: dict[str, Any]
    computed_at: str | None = None


class AnalyticsPage(Page[AnalyticsResult]):
    kind: str
    period: str
    pairs: list[str] | None = Field(default=None, description="correlation only: the pairs kept")


class SimilarMatch(_Model):
    symbol: str
    start: int = Field(description="open time of the match's first bar, epoch ms UTC")
    end: int = Field(description="open time of the bar after its last (exclusive)")
    distance: float = Field(description="z-normalized Euclidean distance to the query window (0 = same shape)")
    forward_return: float | None = Field(description="close `window` bars after the match's last close, over it, − 1")
    max_drawdown: float | None = Field(description="largest peak-to-trough fall of the closes over those bars (≤ 0)")


class SimilarQuery(_Model):
    start: int = Field(description="open time of the latest window's first bar")
    end: int = Field(description="open time of the bar after the latest window (its last closed bar + 1 period)")
    bars: int = Field(description="bars of the pair's history searched")


class SimilarSummary(_Model):
    matches: int
    median_return: float | None
    share_up: float | None = Field(description="share of matches whose forward return is positive")
    median_max_drawdown: float | None


class SimilarPage(_Model):
    pair: str
    period: str
    window: int
    k: int
    symbols: list[str] = Field(description="symbols searched (the pair itself unless `symbols` was given)")
    query: SimilarQuery
    matches: list[SimilarMatch] = Field(description="best first; none overlaps the query window or another")
    summary: SimilarSummary
    searched: dict[str, int] = Field(description="windows compared per symbol (0: history too short)")
    source: dict[str, int] = Field(
        description="bars read from the precomputed series (analytics/pattern_series) and from the candles"
    )


# --- health --------------------------------------------------------------------------------------------


class Liveness(_Model):
    status: Literal["ok"]


class LastReload(_Model):
    result: Literal["ok", "invalid", "unreadable", "builtin"]
    at: float = Field(description="epoch seconds of the last read of the strategy file")
    error: str | None = Field(default=None, description="why the file was not applied (the old strategy stays)")


class StrategyStatus(_Model):
    version: str = Field(description="the strategy file's `version`; `builtin` without a file")
    digest: str = Field(description="SHA-256 prefix of the applied file's bytes")
    source: str
    loaded_at: float = Field(description="epoch seconds this process applied it")
    last_reload: LastReload
    pid: int | None = Field(default=None, description="the worker process that answered")
    strategy: dict[str, Any] | None = Field(default=None, description="the whole active strategy")


class DependencyCheck(_Model):
    name: Literal["mongodb", "metadata", "dagster", "cache"]
    ok: bool
    latency_ms: float
    error: str | None = None


class Readiness(_Model):
    """200 while MongoDB and the metadata database answer (Dagster down only degrades it), else 503.

    ``status`` is what the platform's services check: ``healthy`` (200) or ``unhealthy`` (503);
    their data-manager SDK refuses to start unless it reads ``healthy``. ``state`` says more.
    """

    status: Literal["healthy", "unhealthy"] = Field(description="healthy (200) or unhealthy (503)")
    state: Literal["ready", "degraded", "not_ready"] = Field(
        description="ready; degraded (an optional dependency is down: `degraded` names it); not_ready (503)"
    )
    down: list[str] = Field(description="required dependencies that are down (state not_ready, HTTP 503)")
    degraded: list[str] = Field(
        default_factory=list, description="optional dependencies that are down (Dagster: backfill routes answer 503)"
    )
    checks: list[DependencyCheck]
    strategy: StrategyStatus | None = Field(default=None, description="the active strategy and the last reload")


class HealthSummaryItem(_Model):
    pair: str
    interval: str
    day: str
    score: float
    completeness: float
    freshness: float
    consistency: float
    computed_at: str


class HealthSummary(_Model):
    pairs: list[HealthSummaryItem]


class PairHealth(_Model):
    pair: str
    rows: list[HealthMetricRecord]


# --- catalog -------------------------------------------------------------------------------------------


class DatasetSchema(_Model):
    id: str
    collection: str
    fields: list[SchemaField]


class LineageResponse(_Model):
    id: str
    node: str
    lineage: LineageView


# --- backfill --------------------------------------------------------------------------------------------


class BackfillRequest(_Model):
    """What to backfill: the UTC days touched by ``[start, end)`` for each pair.

    ``pair`` and ``pairs`` are both accepted (clients of the single-pair API send ``pair``).
    """

    pair: str | None = Field(default=None, max_length=64)
    pairs: list[str] | None = Field(default=None, max_length=50)
    period: str = Field(default="1m", max_length=8)
    start: str | int = Field(description="ISO-8601 or epoch milliseconds")
    end: str | int = Field(description="ISO-8601 or epoch milliseconds; exclusive")


class BackfillStarted(_Model):
    id: str
    dagster_backfill_id: str | None = Field(
        default=None, description="set for Dagster partition backfills; POST /backfill/start launches runs"
    )
    runs: list[str] = Field(default_factory=list, description="Dagster run ids, each many partitions")
    partitions: list[str]
    assets: list[str]
    status: str


class DagsterRun(_Model):
    run_id: str
    status: str


class DagsterBackfillView(_Model):
    backfill_id: str
    status: str
    num_partitions: int | None
    runs: list[DagsterRun]
    error: str | None = None


class BackfillJobView(_Model):
    job: BackfillJobRecord
    status: str = Field(description="live status from Dagster when reachable, else the stored one")
    live: DagsterBackfillView | None = None
    source: Literal["dagster", "store"]


class BackfillJobList(_Model):
    jobs: list[BackfillJobRecord]
