"""SQLAlchemy 2.0 models of the metadata database (MySQL/MariaDB in production, SQLite embedded).

Conventions, chosen so the same schema behaves the same on every backend:

* **Two kinds of time.** Columns ending in ``_time`` are *data time*: int64 epoch
  milliseconds UTC, the unit of the MongoDB documents they describe (``first_time``,
  ``open_time``, ``start_time``...), so they compare directly with candle open times
  without conversion. Columns ending in ``_at`` (and ``first_seen``) are *wall-clock
  bookkeeping*: :class:`UTCDateTime`, timezone-aware UTC in Python.
* **UTC storage.** MySQL ``DATETIME`` and SQLite have no time zone, so
  :class:`UTCDateTime` converts to naive UTC on the way in (refusing naive input, which
  is the usual source of silent off-by-hours bugs) and attaches UTC on the way out. On
  MySQL it is ``DATETIME(6)``: audit rows written in the same second still sort.
* **Lengths on every string** (MySQL needs them); indexed strings stay ≤ 255 chars
  so composite utf8mb4 keys fit InnoDB's 3072-byte index limit.
* **Deterministic constraint names** (``naming_convention``) so migrations can drop or
  alter them by name, and SQLite batch migrations can recreate tables.
* Enumerations (severity, status, origin) are ``VARCHAR`` + ``CHECK``: adding a value
  is a migration, never a table rebuild on MySQL as ``ENUM`` changes can be.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Double,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

UTC = dt.UTC

SEVERITIES = ("INFO", "WARN", "ERROR", "CRITICAL")
BACKFILL_STATUSES = ("queued", "requested", "running", "success", "failure", "canceled", "partial")
BACKFILL_ORIGINS = ("sensor", "schedule", "ui", "api")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Autoincrement ids: BIGINT on servers, but SQLite only autoincrements "INTEGER PRIMARY KEY".
BigId = BigInteger().with_variant(Integer, "sqlite")
MYSQL_TABLE_ARGS: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in Python, naive UTC in databases whose DATETIME has no zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Dataset(Base):
    """Catalog entry: one dataset per kind × symbol × interval, e.g. ``candles:BTCUSDT:1m``."""

    __tablename__ = "datasets"
    __table_args__ = (
        Index(None, "kind", "symbol"),
        Index(None, "symbol"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    interval: Mapped[str | None] = mapped_column(String(8))
    collection: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    # [{"name": ..., "type": ..., "description": ...}, ...]
    schema: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    row_count: Mapped[int | None] = mapped_column(BigInteger)
    first_time: Mapped[int | None] = mapped_column(BigInteger)  # epoch ms UTC of the first row
    last_time: Mapped[int | None] = mapped_column(BigInteger)  # epoch ms UTC of the last row
    freshness_seconds: Mapped[float | None] = mapped_column(Double)
    health_score: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AuditLog(Base):
    """One result of one data-quality check on one asset partition."""

    __tablename__ = "audit_logs"
    __table_args__ = (
        Index(None, "symbol", "created_at"),
        Index(None, "created_at"),
        Index(None, "check_name", "created_at"),
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    check_name: Mapped[str] = mapped_column(String(128))
    asset_key: Mapped[str | None] = mapped_column(String(255))
    partition_key: Mapped[str | None] = mapped_column(String(255))
    symbol: Mapped[str | None] = mapped_column(String(32))
    interval: Mapped[str | None] = mapped_column(String(8))
    severity: Mapped[str] = mapped_column(String(16))
    passed: Mapped[bool] = mapped_column(Boolean)
    message: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    run_id: Mapped[str | None] = mapped_column(String(64))


class HealthMetric(Base):
    """Daily health of one symbol × interval; the unique key makes a re-run an update."""

    __tablename__ = "health_metrics"
    __table_args__ = (
        UniqueConstraint("symbol", "interval", "day"),
        Index(None, "day"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    symbol: Mapped[str] = mapped_column(String(32))
    interval: Mapped[str] = mapped_column(String(8))
    day: Mapped[dt.date] = mapped_column(Date)
    completeness: Mapped[float] = mapped_column(Double)
    freshness: Mapped[float] = mapped_column(Double)
    consistency: Mapped[float] = mapped_column(Double)
    score: Mapped[float] = mapped_column(Double)  # 0–100
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    computed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    run_id: Mapped[str | None] = mapped_column(String(64))


class BackfillJob(Base):
    """A backfill request and what Dagster made of it (the API's view of a backfill)."""

    __tablename__ = "backfill_jobs"
    __table_args__ = (
        Index(None, "status", "created_at"),
        Index(None, "created_at"),
        Index(None, "dagster_backfill_id"),
        CheckConstraint(_in("status", BACKFILL_STATUSES), name="status"),
        CheckConstraint(_in("origin", BACKFILL_ORIGINS), name="origin"),
        MYSQL_TABLE_ARGS,
    )

    # uuid4 text by default; callers may bring their own ids (Dagster backfill ids, "run:<run uuid>").
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    origin: Mapped[str] = mapped_column(String(16))
    symbols: Mapped[list[str]] = mapped_column(JSON)
    interval: Mapped[str | None] = mapped_column(String(8))
    start_time: Mapped[int | None] = mapped_column(BigInteger)  # epoch ms UTC, inclusive
    end_time: Mapped[int | None] = mapped_column(BigInteger)  # epoch ms UTC
    partition_keys: Mapped[list[str] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    dagster_backfill_id: Mapped[str | None] = mapped_column(String(64))
    dagster_run_ids: Mapped[list[str] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(128))


class LineageRecord(Base):
    """One edge of the asset graph, upstream → downstream."""

    __tablename__ = "lineage_records"
    __table_args__ = (
        UniqueConstraint("upstream", "downstream"),
        Index(None, "downstream"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    upstream: Mapped[str] = mapped_column(String(255))
    downstream: Mapped[str] = mapped_column(String(255))
    transformation: Mapped[str | None] = mapped_column(Text)
    asset_group: Mapped[str | None] = mapped_column(String(128))
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ConfirmedMissing(Base):
    """A candle the exchange could not supply: counted per attempt, confirmed after N.

    A row with ``confirmed_at`` NULL is a suspect still being retried; once confirmed the
    gap filler stops asking Binance for it (a real exchange outage, not our loss).
    """

    __tablename__ = "confirmed_missing"
    __table_args__ = (
        UniqueConstraint("symbol", "interval", "open_time"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    symbol: Mapped[str] = mapped_column(String(32))
    interval: Mapped[str] = mapped_column(String(8))
    open_time: Mapped[int] = mapped_column(BigInteger)  # epoch ms UTC
    attempts: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(Text)


ARCHIVE_FILE_STATUSES = ("accepted", "refused", "missing")


class ArchiveFile(Base):
    """One file of Binance's public archive as last fetched: provenance of archive candles, or why it was refused.

    ``name`` is Binance's file name (``BTCUSDT-1m-2026-01.zip``), unique: a later fetch of the same
    file (a retry after a refusal, a replaced file) updates the row, and ``fetches`` counts them.
    """

    __tablename__ = "archive_files"
    __table_args__ = (
        UniqueConstraint("name"),
        Index(None, "symbol", "period_start"),
        CheckConstraint(_in("status", ARCHIVE_FILE_STATUSES), name="status"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    symbol: Mapped[str] = mapped_column(String(32))
    interval: Mapped[str] = mapped_column(String(8))
    period: Mapped[str] = mapped_column(String(8))  # monthly | daily
    period_start: Mapped[int] = mapped_column(BigInteger)  # epoch ms UTC
    period_end: Mapped[int] = mapped_column(BigInteger)  # epoch ms UTC, exclusive
    url: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    rows: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    fetched_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    fetches: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[str | None] = mapped_column(String(64))


# --- the trading platform's operational records (issue 13; code in metadata/platform.py) ----------


class ExactDecimal(TypeDecorator[Decimal]):
    """``DECIMAL(38, 18)``: every digit kept on MySQL/MariaDB and PostgreSQL.

    SQLite has no decimal type (NUMERIC is stored as REAL): there the value goes in as a
    float and comes back as the *shortest* decimal that round-trips it (``repr``), so
    ``0.1`` reads back as ``0.1`` rather than SQLAlchemy's 18-digit float expansion. The
    embedded default therefore keeps 15 significant digits; production MariaDB keeps all.
    """

    impl = Numeric(38, 18)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        # SQLAlchemy's stubs type ``asdecimal`` as a Literal per overload; it is a runtime choice here.
        numeric: Any = Numeric
        return dialect.type_descriptor(numeric(38, 18, asdecimal=dialect.name != "sqlite"))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        number = value if isinstance(value, Decimal) else Decimal(str(value))
        return float(number) if dialect.name == "sqlite" else number

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


Money = ExactDecimal()
# superseded: a row the ledger corrected away (POST /api/v1/ledger/positions/supersede); it holds no slot.
POSITION_STATUSES = ("open", "closed", "superseded")
POSITION_SIDES = ("LONG", "SHORT", "BOTH")
# ``Column.info["api"]``: the public type where the column type alone does not say it
# (api/contract/datasets.py derives the API's fields from these tables).
SYMBOL_INFO: dict[str, Any] = {"api": "symbol"}
LIST_INFO: dict[str, Any] = {"api": "list"}


class Position(Base):
    """A trading position the trade engine persists through ``/api/v1/mysql/positions``.

    This class is the one definition of a position row: the API's typed fields
    (``api/contract/datasets.py``) and its response model (``api/contract/rows.py``) are
    derived from these columns.

    ``open_slot`` is 1 while the position is open and NULL once it is closed; the unique key
    ``(symbol, position_side, open_slot)`` therefore allows any number of closed positions
    but exactly one open one per symbol and side — what makes the engine's concurrent
    upserts (filter ``{symbol, position_side, status: "open"}``) end with one row. NULLs
    are distinct in unique keys on MySQL/MariaDB, SQLite and PostgreSQL alike.
    """

    __tablename__ = "positions"
    __table_args__ = (
        UniqueConstraint("position_id"),
        UniqueConstraint("symbol", "position_side", "open_slot"),
        Index(None, "status", "symbol"),
        Index(None, "strategy_id", "entry_time"),
        Index(None, "closed_at"),
        CheckConstraint(_in("status", POSITION_STATUSES), name="status"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    position_id: Mapped[str] = mapped_column(String(64))
    strategy_id: Mapped[str | None] = mapped_column(String(128))
    exchange: Mapped[str | None] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32), info=SYMBOL_INFO)
    position_side: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    open_slot: Mapped[int | None] = mapped_column(Integer)
    entry_price: Mapped[Any] = mapped_column(Money, nullable=True)
    quantity: Mapped[Any] = mapped_column(Money, nullable=True)
    entry_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    stop_loss: Mapped[Any] = mapped_column(Money, nullable=True)
    take_profit: Mapped[Any] = mapped_column(Money, nullable=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    exchange_position_id: Mapped[str | None] = mapped_column(String(128))
    entry_order_id: Mapped[str | None] = mapped_column(String(128))
    entry_trade_ids: Mapped[list[Any] | None] = mapped_column(JSON, info=LIST_INFO)
    commission_asset: Mapped[str | None] = mapped_column(String(16))
    commission_total: Mapped[Any] = mapped_column(Money, nullable=True)
    avg_price: Mapped[Any] = mapped_column(Money, nullable=True)
    unrealized_pnl: Mapped[Any] = mapped_column(Money, nullable=True)
    realized_pnl: Mapped[Any] = mapped_column(Money, nullable=True)
    total_cost: Mapped[Any] = mapped_column(Money, nullable=True)
    total_value: Mapped[Any] = mapped_column(Money, nullable=True)
    last_update: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    final_realized_pnl: Mapped[Any] = mapped_column(Money, nullable=True)
    exit_price: Mapped[Any] = mapped_column(Money, nullable=True)
    exit_time: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    exit_order_id: Mapped[str | None] = mapped_column(String(128))
    exit_trade_ids: Mapped[list[Any] | None] = mapped_column(JSON, info=LIST_INFO)
    pnl: Mapped[Any] = mapped_column(Money, nullable=True)
    pnl_pct: Mapped[Any] = mapped_column(Money, nullable=True)
    pnl_after_fees: Mapped[Any] = mapped_column(Money, nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Double)
    close_reason: Mapped[str | None] = mapped_column(String(255))
    final_commission: Mapped[Any] = mapped_column(Money, nullable=True)
    # Fields the trade engine sends beside the above (its MySQL copy dropped them; kept here).
    entry_commission: Mapped[Any] = mapped_column(Money, nullable=True)
    fee_status: Mapped[str | None] = mapped_column(String(32))
    closed_by_strategy_id: Mapped[str | None] = mapped_column(String(128))
    stop_loss_order_id: Mapped[str | None] = mapped_column(String(128))
    take_profit_order_id: Mapped[str | None] = mapped_column(String(128))
    # True once a ledger correction made the row's PnL unknowable (a superseded phantom row).
    pnl_unknown: Mapped[bool | None] = mapped_column(Boolean)


class DailyPnl(Base):
    """The trade engine's realised PnL per UTC day; the unique ``date`` makes its upsert atomic.

    The one definition of a daily-PnL row, as :class:`Position` is of a position.
    """

    __tablename__ = "daily_pnl"
    __table_args__ = (UniqueConstraint("date"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    date: Mapped[dt.date] = mapped_column(Date)
    daily_pnl: Mapped[Any] = mapped_column(Money)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


IDEMPOTENCY_STATES = ("in_flight", "done")


class IdempotencyKey(Base):
    """One write request's ``Idempotency-Key`` and its answer (``dm_resources/metadata/idempotency.py``).

    ``(caller, key)`` is unique: a caller's key names one request. ``state`` is ``in_flight``
    from the claim until the write's own transaction sets ``done`` with the answer, so a
    stored answer and the write it describes commit together or not at all. ``lease_until``
    bounds how long an in-flight claim blocks a repeat (a crashed request frees its key);
    ``owner`` tells the claim's holder from a later one that took the key over.
    Server-side receipts (writes sent without a key) use ``caller = "~receipt"``.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("caller", "key"),
        Index(None, "expires_at"),
        CheckConstraint(_in("state", IDEMPOTENCY_STATES), name="state"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    caller: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    request: Mapped[str] = mapped_column(String(255))  # "PUT /api/v1/mysql/positions", for operators
    state: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str | None] = mapped_column(Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class MutationAudit(Base):
    """Who deleted what: one row per delete through the platform API, written in the delete's transaction.

    ``actor`` names the caller without its secret (a service name, ``DM_API_TOKEN``, or a
    token's digest prefix); ``filter`` is the request's filter as sent (JSON text, bounded).
    """

    __tablename__ = "mutation_audit"
    __table_args__ = (
        Index(None, "dataset", "created_at"),
        Index(None, "created_at"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(64))
    filter: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer)


# The platform services' other records (config versions, lifecycle, ledger, write audit) live in
# their own module; importing it here registers them on Base.metadata for Alembic and the tests.
from dm_resources.metadata import service_models as _service_models  # noqa: E402, F401
