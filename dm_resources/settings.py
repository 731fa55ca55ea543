"""Configuration from the environment (``DM_*``), validated once at start-up.

Every component reads the same :class:`Settings`, so a typo in one variable is
reported the same way by the ingest service, Dagster and the API: a
:class:`SettingsError` that names the variable and the bad value, before any
connection is attempted.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dm_resources.contracts import validate_symbol

ENV_PREFIX = "DM_"
DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


# The least retention that keeps what the assets read (days); see RETENTION_WHY.
RETENTION_MIN_DAYS = {
    "agg_trades": 4,
    "depth_updates": 2,
    "depth_snapshots": 2,
    "book_tickers": 1,
    "tickers": 1,
    "mark_prices": 1,
    "analytics": 1,
}
RETENTION_WHY = {
    "agg_trades": "the gap sensor re-builds 1m candles of the last 3 days from trades",
    "depth_updates": "the order book of yesterday and today is rebuilt from the diffs",
    "depth_snapshots": "the order book of yesterday and today is rebuilt from the snapshots",
    "book_tickers": "spread analytics read the last hour",
    "tickers": "kept at least a day",
    "mark_prices": "funding analytics read the last hour of predicted rates",
    "analytics": "the API serves the latest analytics",
}


class SettingsError(ValueError):
    """A ``DM_*`` variable has a value the system cannot run with."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All ``DM_*`` variables; see ``.env.example`` for the documented list."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    nats_subject: str = "binance.futures.websocket.data"
    nats_stream: str = "BINANCE_FUTURES"
    nats_durable: str = "dm-ingest"
    mongo_url: str = "mongodb://127.0.0.1:27017/?directConnection=true"
    mongo_db: str = "market_data"
    metadata_url: str = "sqlite:///var/metadata.db"
    binance_rest_url: str = "https://fapi.binance.com"
    # Binance's public data host (history as checked files, no REST weight); "" switches the archive off.
    binance_archive_url: str = "https://data.binance.vision"
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    partition_start: dt.date = dt.date(2026, 1, 1)
    api_token: str | None = None
    dagster_graphql_url: str = "http://127.0.0.1:3000/graphql"
    # The API's L2 cache shared by its workers (redis://, rediss://, unix://; Redis, Valkey or
    # DragonflyDB). None: each worker caches on its own, as without it.
    redis_url: str | None = None
    # Sensors and schedules start RUNNING by default; benchmarks and some tests turn them off
    # so that only what they launch runs.
    automation: bool = True
    # Partitions per run when Dagster backfills candles (0 = one run for the whole backfill).
    backfill_partitions_per_run: int = Field(1000, ge=0, le=1000)
    # Retention in days per high-volume collection (0 = keep forever); the daily retention job
    # (dm_assets/retention) deletes older whole days, never one a pending partition still needs.
    # Minimums (RETENTION_MIN_DAYS) keep what the candle, order-book and analytics assets read.
    retention_agg_trades_days: int = Field(30, ge=0)
    retention_depth_updates_days: int = Field(7, ge=0)
    retention_depth_snapshots_days: int = Field(7, ge=0)
    retention_book_tickers_days: int = Field(7, ge=0)
    retention_tickers_days: int = Field(7, ge=0)
    retention_mark_prices_days: int = Field(35, ge=0)
    retention_analytics_days: int = Field(90, ge=0)

    @field_validator(
        "retention_agg_trades_days",
        "retention_depth_updates_days",
        "retention_depth_snapshots_days",
        "retention_book_tickers_days",
        "retention_tickers_days",
        "retention_mark_prices_days",
        "retention_analytics_days",
    )
    @classmethod
    def _retention(cls, v: int, info: ValidationInfo) -> int:
        name = str(info.field_name).removeprefix("retention_").removesuffix("_days")
        floor = RETENTION_MIN_DAYS.get(name, 1)
        if v != 0 and v < floor:
            raise ValueError(f"must be 0 (keep forever) or at least {floor} days: {RETENTION_WHY[name]}")
        return v

    def retention_days(self, collection: str) -> int | None:
        """Configured retention of a collection in days; None when it has no retention setting."""
        value = getattr(self, f"retention_{collection}_days", None)
        return int(value) if value is not None else None

    # Per-symbol overrides of the data-quality thresholds (JSON), e.g.
    # {"*": {"jump_z": 12}, "DOGEUSDT": {"min_move": 0.01}}; keys in dm_assets/candles/integrity.py.
    quality_thresholds: dict[str, dict[str, float]] = Field(default_factory=dict)

    # The platform's services (api/contract/auth.py): JSON {service: token} or
    # {service: {"token", "scopes"}}; never logged. DM_AUTH_MODE: enforce (401/403), audit
    # (unverified requests pass, logged and counted per service and route), off.
    service_tokens: SecretStr | None = None
    auth_mode: Literal["enforce", "audit", "off"] = "enforce"

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, v: str) -> str:
        for url in v.split(","):
            parsed = urlparse(url.strip())
            if parsed.scheme not in {"nats", "tls", "ws", "wss"} or not parsed.hostname:
                raise ValueError("must be a nats://host:port URL (comma-separated for a cluster)")
        return v

    @field_validator("nats_subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v) or ".." in v or v.startswith(".") or v.endswith("."):
            raise ValueError("must be a NATS subject such as binance.futures.websocket.data")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            return None
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://host:port/db, rediss:// or unix:// URL (Redis, Valkey or DragonflyDB)")
        return v

    @field_validator("mongo_url")
    @classmethod
    def _mongo_scheme(cls, v: str) -> str:
        if not v.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must be a mongodb:// or mongodb+srv:// URL")
        return v

    @field_validator("mongo_db")
    @classmethod
    def _mongo_db(cls, v: str) -> str:
        if not v or any(c in v for c in '/\\. "$') or len(v) > 63:
            raise ValueError('must be a MongoDB database name (no / \\ . space " $, at most 63 chars)')
        return v

    @field_validator("metadata_url")
    @classmethod
    def _metadata_url(cls, v: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(v)
        except ArgumentError as exc:
            raise ValueError("must be a SQLAlchemy URL such as mysql+pymysql://user:pw@host/db") from exc
        if url.get_backend_name() not in {"mysql", "mariadb", "sqlite", "postgresql"}:
            raise ValueError("backend must be mysql, mariadb, sqlite or postgresql")
        return v

    @field_validator("binance_rest_url", "dagster_graphql_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("binance_archive_url")
    @classmethod
    def _archive_url(cls, v: str) -> str:
        if not v:
            return ""
        parsed = urlparse(v)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ValueError('must be an http:// or https:// URL, or "" to use REST only')
        return v.rstrip("/")

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols_csv(cls, v: object) -> object:
        return _split_csv(v)

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for s in v:
            sym = validate_symbol(s.upper())
            if sym not in out:
                out.append(sym)
        if not out:
            raise ValueError("needs at least one symbol, e.g. BTCUSDT,ETHUSDT")
        return out


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, turning pydantic's report into one clear line per field."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic validates the overrides
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            var = f"{ENV_PREFIX}{field.upper()}"
            value = err.get("input")
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{var}={value!r}: {msg}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; tests build their own with :func:`load_settings`."""
    return load_settings()
