"""Plain pydantic records the metadata store takes and returns.

The store never hands out ORM objects: they would be bound to a closed session, and
the API wants serialisable models anyway (these double as FastAPI response models).
Input models validate enumerations and ranges before anything reaches the database, so
a bad severity or status fails in the caller with a clear message, not as a CHECK
constraint error from MySQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

Severity = Literal["INFO", "WARN", "ERROR", "CRITICAL"]
BackfillStatus = Literal["queued", "requested", "running", "success", "failure", "canceled", "partial"]
BackfillOrigin = Literal["sensor", "schedule", "ui", "api"]

# A backfill in one of these states may still change; the others are final.
ACTIVE_BACKFILL_STATUSES: tuple[BackfillStatus, ...] = ("queued", "requested", "running")

_Score = Field(ge=0.0, le=100.0)


def dataset_id(kind: str, symbol: str, interval: str | None = None) -> str:
    """The catalog key ``kind:SYMBOL[:interval]``, e.g. ``candles:BTCUSDT:1m``."""
    return f"{kind}:{symbol.upper()}" + (f":{interval}" if interval else "")


class _Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, extra="forbid")


# --- audit logs -------------------------------------------------------------------------------


class AuditLogIn(_Record):
    """One check result to store; ``created_at`` defaults to the time of the write."""

    check_name: str = Field(min_length=1, max_length=128)
    severity: Severity = "INFO"
    passed: bool
    message: str | None = None
    details: dict[str, Any] | None = None
    asset_key: str | None = Field(default=None, max_length=255)
    partition_key: str | None = Field(default=None, max_length=255)
    symbol: str | None = Field(default=None, max_length=32)
    interval: str | None = Field(default=None, max_length=8)
    run_id: str | None = Field(default=None, max_length=64)
    created_at: AwareDatetime | None = None


class AuditLogRecord(_Record):
    id: int
    created_at: dt.datetime
    check_name: str
    severity: Severity
    passed: bool
    message: str | None
    details: dict[str, Any] | None
    asset_key: str | None
    partition_key: str | None
    symbol: str | None
    interval: str | None
    run_id: str | None


# --- health ----------------------------------------------------------------------------------


class HealthMetricIn(_Record):
    """A day's health of one symbol × interval; all scores on the same 0–100 scale."""

    symbol: str = Field(min_length=1, max_length=32)
    interval: str = Field(min_length=1, max_length=8)
    day: dt.date
    completeness: float = _Score
    freshness: float = _Score
    consistency: float = _Score
    score: float = _Score
    details: dict[str, Any] | None = None
    run_id: str | None = Field(default=None, max_length=64)
    computed_at: AwareDatetime | None = None


class HealthMetricRecord(_Record):
    id: int
    symbol: str
    interval: str
    day: dt.date
    completeness: float
    freshness: float
    consistency: float
    score: float
    details: dict[str, Any] | None
    computed_at: dt.datetime
    run_id: str | None


# --- backfill jobs ---------------------------------------------------------------------------


class BackfillJobUpdate(_Record):
    """The fields :meth:`MetadataStore.update_backfill_job` may change (unknown names are refused)."""

    status: BackfillStatus | None = None
    dagster_backfill_id: str | None = Field(default=None, max_length=64)
    dagster_run_ids: list[str] | None = None
    error: str | None = None
    partition_keys: list[str] | None = None
    symbols: list[str] | None = None
    interval: str | None = Field(default=None, max_length=8)
    start_time: int | None = None
    end_time: int | None = None
    requested_by: str | None = Field(default=None, max_length=128)

    @field_validator("status", "symbols")
    @classmethod
    def _not_null(cls, v: object) -> object:
        if v is None:
            raise ValueError("may not be set to null")
        return v


class BackfillJobRecord(_Record):
    id: str = Field(min_length=1, max_length=64)
    created_at: dt.datetime
    updated_at: dt.datetime
    origin: BackfillOrigin
    symbols: list[str]
    interval: str | None
    start_time: int | None
    end_time: int | None
    partition_keys: list[str] | None
    status: BackfillStatus
    dagster_backfill_id: str | None
    dagster_run_ids: list[str] | None
    error: str | None
    requested_by: str | None


# --- datasets --------------------------------------------------------------------------------


class SchemaField(_Record):
    name: str
    type: str
    description: str = ""


class DatasetIn(_Record):
    """A catalog entry to upsert.

    On update only the fields the caller *set* are written, so the catalog asset can
    refresh counts and the health job can set ``health_score`` without erasing each
    other's values. ``id`` defaults to :func:`dataset_id`.
    """

    kind: str = Field(min_length=1, max_length=64)
    symbol: str = Field(min_length=1, max_length=32)
    interval: str | None = Field(default=None, max_length=8)
    collection: str = Field(min_length=1, max_length=64)
    id: str | None = Field(default=None, max_length=255)
    description: str | None = None
    schema_: list[SchemaField] | None = Field(default=None, alias="schema")
    row_count: int | None = None
    first_time: int | None = None  # epoch ms UTC
    last_time: int | None = None  # epoch ms UTC
    freshness_seconds: float | None = None
    health_score: float | None = Field(default=None, ge=0.0, le=100.0)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def key(self) -> str:
        return self.id or dataset_id(self.kind, self.symbol, self.interval)


class DatasetRecord(_Record):
    id: str
    kind: str
    symbol: str
    interval: str | None
    collection: str
    description: str | None
    schema_: list[SchemaField] | None = Field(alias="schema")
    row_count: int | None
    first_time: int | None
    last_time: int | None
    freshness_seconds: float | None
    health_score: float | None
    updated_at: dt.datetime

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


# --- lineage ---------------------------------------------------------------------------------


class LineageEdge(_Record):
    """``upstream`` feeds ``downstream`` (node names are asset keys such as ``candles_1m``)."""

    upstream: str = Field(min_length=1, max_length=255)
    downstream: str = Field(min_length=1, max_length=255)
    transformation: str | None = None
    asset_group: str | None = Field(default=None, max_length=128)
    recorded_at: dt.datetime | None = None


class LineageView(_Record):
    """A node with the edges above it (``upstream``) and below it (``downstream``)."""

    node: str
    upstream: list[LineageEdge]
    downstream: list[LineageEdge]


# --- confirmed missing -----------------------------------------------------------------------


class MissingRecord(_Record):
    symbol: str
    interval: str
    open_time: int
    attempts: int
    first_seen: dt.datetime
    confirmed_at: dt.datetime | None
    reason: str | None
