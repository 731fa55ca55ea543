"""Facts the ingest service, the Dagster code and the API must agree on: one home each.

No Dagster import here (the API and the ingest service import this module), so asset
keys are plain paths; ``dm_assets`` turns them into ``AssetKey``s.

* The candle intervals we build and serve, and the asset paths that hold them; every asset
  group name and path (the Dagster domains and the API's catalog use these, never literals).
* The names of the partition dimensions and of the dynamic ``symbols`` partitions (the API
  adds symbols to them through GraphQL, Dagster reads them).
* The pseudo-symbol under which cross-symbol analytics (correlation) are stored.
* The symbol rule: what a Binance USD-M symbol may look like, applied alike to events on
  the bus, ``DM_SYMBOLS`` and API parameters.
* Time: ``now_ms``, the floor and slack of open-ended reads, and the duration labels
  (``15m``, ``4h``, ``7d``, ``1w``) used for windows.
"""

from __future__ import annotations

import re
import time

from dm_resources.intervals import DAY_MS, HOUR_MS, MINUTE_MS, WEEK_MS

# -- candles -------------------------------------------------------------------------------
#: Intervals built from the raw data, each a date × symbol partitioned asset, shortest first.
CANDLE_INTERVALS: tuple[str, ...] = ("1m", "5m", "15m", "1h", "4h", "1d")
#: Those derived from stored 1m candles.
HIGHER_CANDLE_INTERVALS: tuple[str, ...] = CANDLE_INTERVALS[1:]

#: A candle's float fields (OHLC then volumes), in the order every layout and response uses.
CANDLE_PRICE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close")
CANDLE_VOLUME_FIELDS: tuple[str, ...] = ("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume")
CANDLE_FLOAT_FIELDS: tuple[str, ...] = CANDLE_PRICE_FIELDS + CANDLE_VOLUME_FIELDS

CANDLES_GROUP = "candles"
QUALITY_GROUP = "quality"

# -- asset groups (the first part of every asset path) -------------------------------------
RAW_GROUP = "raw"
ANALYTICS_GROUP = "analytics"
ORDERBOOK_GROUP = "orderbook"
FUNDING_GROUP = "funding"
CATALOG_GROUP = "catalog"
MAINTENANCE_GROUP = "maintenance"


def candle_asset_path(interval: str) -> list[str]:
    """Asset path of the candles of ``interval`` (``["candles", "candles_1m"]``)."""
    if interval not in CANDLE_INTERVALS:
        raise ValueError(f"no candle asset for {interval!r}; built intervals: {', '.join(CANDLE_INTERVALS)}")
    return [CANDLES_GROUP, f"candles_{interval}"]


CANDLE_ASSET_PATHS: tuple[list[str], ...] = tuple(candle_asset_path(iv) for iv in CANDLE_INTERVALS)
AUDIT_RESULTS_PATH: list[str] = [QUALITY_GROUP, "audit_results"]
HEALTH_SCORES_PATH: list[str] = [QUALITY_GROUP, "health_scores"]
FUNDING_HISTORY_PATH: list[str] = [FUNDING_GROUP, "funding_history"]
ORDERBOOK_SNAPSHOTS_PATH: list[str] = [ORDERBOOK_GROUP, "orderbook_snapshots"]
CATALOG_DATASETS_PATH: list[str] = [CATALOG_GROUP, "datasets"]
CATALOG_LINEAGE_PATH: list[str] = [CATALOG_GROUP, "lineage"]
RETENTION_PATH: list[str] = [MAINTENANCE_GROUP, "retention"]


def raw_asset_path(collection: str) -> list[str]:
    """Asset path of a raw MongoDB collection the ingest service writes (``["raw", "klines"]``)."""
    return [RAW_GROUP, collection]


def analytics_asset_path(kind: str) -> list[str]:
    """Asset path of one analytics kind (``["analytics", "volatility"]``)."""
    return [ANALYTICS_GROUP, kind]


#: What one backfill partition materializes: 1m candles to the health score, and the day's
#: settled funding history from REST.
BACKFILL_ASSET_PATHS: tuple[list[str], ...] = (
    *CANDLE_ASSET_PATHS,
    AUDIT_RESULTS_PATH,
    HEALTH_SCORES_PATH,
    FUNDING_HISTORY_PATH,
)

# -- partitions ----------------------------------------------------------------------------
SYMBOLS_PARTITIONS_NAME = "symbols"
DATE_DIM = "date"
SYMBOL_DIM = "symbol"
#: Stored as the ``symbol`` of documents that concern all symbols (correlation analytics).
CORRELATION_SYMBOL = "*"

# -- symbols -------------------------------------------------------------------------------
# Upper-case ASCII letters and digits (``BTCUSDT``, ``1000PEPEUSDT``), non-ASCII letters (Binance
# lists a few such perpetuals), and the ``_YYMMDD`` suffix of delivery contracts
# (``BTCUSDT_251226``). No lower case (stream names are lower case, symbols never), no
# separators that would break ``_id``s (``:``) or MongoDB paths (``.``, ``$``).
SYMBOL_RE = re.compile(r"^(?:[A-Z0-9]|[^\x00-\x7f\W]){2,30}(?:_[0-9]{6})?$")


def is_symbol(value: object) -> bool:
    return isinstance(value, str) and SYMBOL_RE.match(value) is not None


def validate_symbol(value: object) -> str:
    """``value`` if it is a symbol by :data:`SYMBOL_RE`, else a ValueError that says why."""
    if not is_symbol(value):
        raise ValueError(
            f"{value!r} is not a futures symbol: 2-30 upper-case letters or digits "
            "(e.g. BTCUSDT, 1000PEPEUSDT), optionally _YYMMDD for delivery contracts"
        )
    return str(value)


# -- time ----------------------------------------------------------------------------------
#: No market data before this: open-ended reads (API gallops, store scans) are bounded below
#: here, because SecantusDB scans on reads bounded only by symbol, and the candle store refuses
#: to write below it (a candle there would be stored but never read).
FLOOR_MS = 1_262_304_000_000  # 2010-01-01
#: Open-ended reads stop a day past the wall clock: nothing is stored from the future.
FUTURE_SLACK_MS = DAY_MS


def now_ms() -> int:
    """Wall-clock UTC now in epoch milliseconds (the unit of every stored time)."""
    return time.time_ns() // 1_000_000


_DURATION = re.compile(r"^([1-9][0-9]*)([mhdw])$")
_UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": WEEK_MS}


def duration_ms(label: str) -> int:
    """Length of a window label: ``m`` minutes, ``h`` hours, ``d`` days, ``w`` weeks.

    ``M`` (a calendar month) has no fixed length and is refused rather than guessed as 30 days;
    ``1m`` is a minute, never a month.
    """
    m = _DURATION.match(label)
    if m is None:
        hint = " (months have no fixed length)" if label.endswith("M") else ""
        raise ValueError(f"{label!r} is not a duration like 15m, 4h, 7d or 1w{hint}")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


# --- who wrote a raw kline (``klines.source``) --------------------------------------------------
# The exchange's own klines (websocket, then REST) are the better sources; a kline an extractor
# job sent through the API is stored only where the exchange's is missing, and the exchange's
# kline replaces it when it arrives (ingest_service/writer.py). Nothing replaces the exchange's.
KLINE_SOURCE_WS = "ws"
KLINE_SOURCE_REST = "rest"
KLINE_SOURCE_EXTRACTOR = "extractor"
# Stored klines of these sources give way to a kline from the exchange for the same minute.
KLINE_SOURCES_REPLACEABLE: tuple[str, ...] = (KLINE_SOURCE_EXTRACTOR,)
