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


# --- health --------------------------------------------------------------------------------------------


class Liveness(_Model):
    status: Literal["ok"]


class DependencyCheck(_Model):
    name: Literal["mongodb", "metadata", "dagster"]
    ok: bool
    latency_ms: float
    error: str | None = None


class Readiness(_Model):
    """``ready``/``degraded`` answer 200: only MongoDB and the metadata database gate readiness."""

    status: Literal["ready", "degraded", "not_ready"]
    down: list[str] = Field(description="required dependencies that are down (status not_ready, HTTP 503)")
    degraded: list[str] = Field(
        default_factory=list, description="optional dependencies that are down (Dagster: backfill routes answer 503)"
    )
    checks: list[DependencyCheck]


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
