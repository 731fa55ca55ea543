"""The allow-list behind ``/api/v1``: which collections exist, where they live, and their typed fields.

Nothing a client sends picks a store, a table or a field by itself: the ``collection`` path
segment is looked up here (an unknown one is refused with the list of allowed ones), the
``database`` value is *checked* against the dataset it names, and filters may only use the
fields declared below, each with a type its values are coerced to before any store sees them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from sqlalchemy import JSON, Boolean, Column, Date, Float, Integer, String

from api.params import ParamError
from dm_resources.contracts import CANDLE_FLOAT_FIELDS
from dm_resources.intervals import INTERVAL_MS, VALID_INTERVALS, WEEK_MS
from dm_resources.metadata.models import POSITION_SIDES as POSITION_SIDES  # the table's vocabularies, re-exported
from dm_resources.metadata.models import POSITION_STATUSES as POSITION_STATUSES
from dm_resources.metadata.models import ExactDecimal, UTCDateTime
from dm_resources.metadata.platform import AUTO_FILLED, INTERNAL, TABLES

FieldType = Literal["str", "symbol", "int", "float", "decimal", "datetime", "date", "bool", "json", "list"]
Database = Literal["mongodb", "mysql"]
DATABASES: tuple[str, ...] = ("mongodb", "mysql")
# Types a filter may compare on; json/list columns are stored and returned, never filtered.
FILTERABLE: frozenset[str] = frozenset({"str", "symbol", "int", "float", "decimal", "datetime", "date", "bool"})

# Scopes a token may carry (DM_API_TOKENS). ``*`` grants all of them.
SCOPE_READ = "read"
SCOPE_POSITIONS = "positions:write"
SCOPE_PNL = "pnl:write"
SCOPE_KLINES = "klines:write"
SCOPES: tuple[str, ...] = (SCOPE_READ, SCOPE_POSITIONS, SCOPE_PNL, SCOPE_KLINES)
# In ``Dataset.narrowing``: a time range with both bounds (a field of type datetime or date).
RANGE = "<time range>"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    stored: str = ""  # name in the store when it differs (klines map to our field names)
    required: bool = False  # on insert

    @property
    def store_name(self) -> str:
        return self.stored or self.name

    @property
    def filterable(self) -> bool:
        return self.type in FILTERABLE


def _fields(*specs: FieldSpec) -> dict[str, FieldSpec]:
    return {s.name: s for s in specs}


def _f(name: str, type_: FieldType, stored: str = "", required: bool = False) -> FieldSpec:
    return FieldSpec(name, type_, stored, required)


@dataclass(frozen=True)
class Dataset:
    """One collection of the contract. ``kind`` says which code path serves it."""

    name: str
    database: Database
    kind: Literal["sql", "klines", "market"]
    fields: dict[str, FieldSpec]
    description: str
    write_scope: str | None = None  # None: read-only
    store: str = ""  # table (sql) or MongoDB collection
    index_eq: tuple[str, ...] = ()  # public fields a read must fix by equality (the index prefix)
    time_field: str = ""  # public name of the index's time field (market, klines)
    time_aliases: tuple[str, ...] = ()  # public fields ordered like the time field (klines close_time)
    interval: str | None = None  # klines_{interval}
    step_ms: int = 60_000  # typical spacing of rows, sizes the first read window
    extra_eq: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # fixed store equality (interval)
    # What an update or delete filter must name (any one alternative): fields fixed by equality
    # or $in, and RANGE for both bounds on a time field (filters.check_mutation_filter).
    narrowing: tuple[tuple[str, ...], ...] = ()
    # Other database names clients address it by (checked, never used to pick the store): the
    # trade engine's generic upsert names positions' database "mongodb".
    database_names: tuple[str, ...] = ()

    @property
    def writable(self) -> bool:
        return self.write_scope is not None

    def field_names(self) -> list[str]:
        return list(self.fields)


_SQL_TYPES: tuple[tuple[type[Any], FieldType], ...] = (
    (ExactDecimal, "decimal"),
    (UTCDateTime, "datetime"),
    (Date, "date"),
    (Boolean, "bool"),
    (Integer, "int"),  # BigInteger is an Integer
    (Float, "float"),  # Double is a Float
    (String, "str"),
    (JSON, "json"),
)


def _api_type(column: Column[Any]) -> FieldType:
    declared = column.info.get("api")
    if declared is not None:
        return cast(FieldType, declared)
    for sql_type, api_type in _SQL_TYPES:
        if isinstance(column.type, sql_type):
            return api_type
    raise TypeError(f"{column.table.name}.{column.name}: no API type for {column.type!r}")  # pragma: no cover


def table_fields(table: str) -> dict[str, FieldSpec]:
    """A platform table's public columns as typed fields, in column order.

    The table (``dm_resources/metadata/models.py``) is the one definition of the row: a
    field is required on insert when its column is NOT NULL and the store does not fill it.
    """
    return _fields(
        *(
            FieldSpec(c.name, _api_type(c), required=not c.nullable and c.name not in AUTO_FILLED[table])
            for c in TABLES[table].columns
            if c.name not in INTERNAL
        )
    )


POSITION_FIELDS = table_fields("positions")
DAILY_PNL_FIELDS = table_fields("daily_pnl")

# Extractor kline records, public name → our ``klines`` field (docs/DATA_MODEL.md). What the
# candles need is required (a kline without its volumes would build a candle of NaNs).
KLINE_FIELDS = _fields(
    _f("symbol", "symbol", required=True),
    _f("interval", "str"),
    _f("open_time", "datetime", required=True),
    _f("close_time", "datetime"),
    _f("timestamp", "datetime", stored="open_time"),
    _f("open_price", "decimal", stored="open", required=True),
    _f("high_price", "decimal", stored="high", required=True),
    _f("low_price", "decimal", stored="low", required=True),
    _f("close_price", "decimal", stored="close", required=True),
    _f("volume", "decimal", required=True),
    _f("quote_asset_volume", "decimal", stored="quote_volume", required=True),
    _f("taker_buy_base_asset_volume", "decimal", stored="taker_buy_volume", required=True),
    _f("taker_buy_quote_asset_volume", "decimal", stored="taker_buy_quote_volume", required=True),
    _f("price_change", "decimal"),
    _f("price_change_percent", "decimal"),
    _f("number_of_trades", "int", stored="trades", required=True),
    _f("source", "str"),
    _f("extractor_version", "str"),
    _f("extracted_at", "datetime"),
)

_SYM = _f("symbol", "symbol")
MARKET: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "candles",
            "mongodb",
            "market",
            _fields(
                _SYM,
                _f("interval", "str"),
                _f("open_time", "datetime"),
                _f("close_time", "datetime"),
                *(_f(n, "float") for n in CANDLE_FLOAT_FIELDS),
                _f("trades", "int"),
                _f("source", "str"),
            ),
            "Candles built by Dagster (1m and higher), floats; times epoch ms",
            store="candles",
            index_eq=("symbol", "interval"),
            time_field="open_time",
        ),
        Dataset(
            "agg_trades",
            "mongodb",
            "market",
            _fields(
                _SYM,
                _f("agg_id", "int"),
                _f("price", "decimal"),
                _f("qty", "decimal"),
                _f("first_trade_id", "int"),
                _f("last_trade_id", "int"),
                _f("trade_time", "datetime"),
                _f("event_time", "datetime"),
                _f("buyer_is_maker", "bool"),
            ),
            "Aggregated trades; prices and quantities as decimal strings",
            store="agg_trades",
            index_eq=("symbol",),
            time_field="trade_time",
            step_ms=100,
        ),
        Dataset(
            "funding_rates",
            "mongodb",
            "market",
            _fields(
                _SYM,
                _f("funding_time", "datetime"),
                _f("funding_rate", "decimal"),
                _f("mark_price", "decimal"),
                _f("event_time", "datetime"),
            ),
            "Settled funding rates per funding time",
            store="funding_rates",
            index_eq=("symbol",),
            time_field="funding_time",
            step_ms=8 * 3_600_000,
        ),
        Dataset(
            "mark_prices",
            "mongodb",
            "market",
            _fields(
                _SYM,
                _f("event_time", "datetime"),
                _f("mark_price", "decimal"),
                _f("index_price", "decimal"),
                _f("estimated_settle_price", "decimal"),
                _f("funding_rate", "decimal"),
                _f("next_funding_time", "datetime"),
            ),
            "Mark price updates with the predicted funding rate",
            store="mark_prices",
            index_eq=("symbol",),
            time_field="event_time",
            step_ms=1000,
        ),
        Dataset(
            "book_tickers",
            "mongodb",
            "market",
            _fields(
                _SYM,
                _f("update_id", "int"),
                _f("event_time", "datetime"),
                _f("transaction_time", "datetime"),
                _f("bid_price", "decimal"),
                _f("bid_qty", "decimal"),
                _f("ask_price", "decimal"),
                _f("ask_qty", "decimal"),
            ),
            "Best bid/ask updates",
            store="book_tickers",
            index_eq=("symbol",),
            time_field="event_time",
            step_ms=100,
        ),
        Dataset(
            "analytics",
            "mongodb",
            "market",
            _fields(
                _SYM,
                _f("kind", "str"),
                _f("interval", "str"),
                _f("window_end", "datetime"),
                _f("values", "json"),
                _f("computed_at", "datetime"),
            ),
            "Analytics results (volatility, volume, spread, trend, funding, correlation)",
            store="analytics",
            index_eq=("symbol", "kind", "interval"),
            time_field="window_end",
        ),
    )
}

# The names the platform's services use for the same data.
MARKET_ALIASES = {"trades": "agg_trades", "funding": "funding_rates"}
MARKET.update({alias: replace(MARKET[name], name=alias) for alias, name in MARKET_ALIASES.items()})

PLATFORM: dict[str, Dataset] = {
    "positions": Dataset(
        "positions",
        "mysql",
        "sql",
        POSITION_FIELDS,
        "The trade engine's positions (one open position per symbol and position_side)",
        write_scope=SCOPE_POSITIONS,
        store="positions",
        narrowing=(("position_id",), ("symbol", "status"), ("symbol", RANGE)),
        database_names=("mongodb",),
    ),
    "daily_pnl": Dataset(
        "daily_pnl",
        "mysql",
        "sql",
        DAILY_PNL_FIELDS,
        "The trade engine's PnL per UTC day (one row per date)",
        write_scope=SCOPE_PNL,
        store="daily_pnl",
        narrowing=(("date",), (RANGE,)),
        database_names=("mongodb",),
    ),
}

# ``klines_15m`` and the older ``klines_m15`` spelling (unit first): m→minutes, h→hours, d→days, w→weeks.
_KLINES_RE = re.compile(r"^klines_(?:(?P<n>[0-9]{1,2})(?P<u>[mhdwM])|(?P<u2>[mhdwM])(?P<n2>[0-9]{1,2}))$")
KLINES_PATTERNS = ("klines_{interval}", "klines_{unit}{n} (older spelling, e.g. klines_m15)")


def klines_interval(name: str) -> str | None:
    """The Binance interval a ``klines_*`` collection name stands for, or None."""
    m = _KLINES_RE.match(name)
    if m is None:
        return None
    interval = f"{m['n']}{m['u']}" if m["n"] else f"{m['n2']}{m['u2']}"
    return interval if interval in VALID_INTERVALS else None


def _interval_step(interval: str) -> int:
    if interval in INTERVAL_MS:
        return INTERVAL_MS[interval]
    return WEEK_MS if interval == "1w" else 31 * 86_400_000


def allowed_names() -> list[str]:
    return [*PLATFORM, *(f"klines_{iv}" for iv in VALID_INTERVALS), *MARKET]


def resolve(collection: str, database: str | None = None, *, where: str = "path") -> Dataset:
    """The dataset ``collection`` names, after checking ``database`` agrees with it; else a 4xx.

    An unknown collection is a 404 when it came in the URL path, a 422 when in a body.
    """
    ds = PLATFORM.get(collection) or MARKET.get(collection)
    if ds is None:
        interval = klines_interval(collection)
        if interval is not None:
            ds = Dataset(
                collection,
                "mongodb",
                "klines",
                KLINE_FIELDS,
                f"Klines of interval {interval}, stored in the raw `klines` collection",
                write_scope=SCOPE_KLINES,
                store="klines",
                index_eq=("symbol",),
                time_field="open_time",
                time_aliases=("timestamp", "close_time"),
                interval=interval,
                step_ms=_interval_step(interval),
                extra_eq=(("interval", interval),),
            )
    if ds is None:
        shown = collection if len(collection) <= 64 else collection[:64] + "…"
        raise ParamError(
            "collection",
            f"unknown collection {shown!r}; allowed: {', '.join([*PLATFORM, *MARKET])}, "
            f"and {' or '.join(KLINES_PATTERNS)} with interval one of {', '.join(VALID_INTERVALS)}",
            status=404 if where == "path" else 422,
            where=where,
        )
    if database is not None and database != ds.database and database not in ds.database_names:
        if database not in DATABASES:
            msg = f"unknown database {database[:32]!r}; one of {', '.join(DATABASES)}"
        else:
            msg = f"collection {ds.name!r} lives in database {ds.database!r}, not {database!r}"
        raise ParamError("database", msg, where=where)
    return ds
