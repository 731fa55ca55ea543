"""Tables of the platform services' own records beside positions and daily PnL.

* ``api_write_audit``: one row per write request the services make (who, verified or not,
  route, target, status): the audit trail that names the service on every write.
* ``strategy_configs`` (current values per scope), ``strategy_config_versions`` (every change,
  append-only: the audit trail and what a rollback reads) and ``strategy_parameters`` (each
  strategy's declared parameters: what "unknown parameter" is checked against).
* ``strategy_lifecycle_events``: transitions; the newest ``seq`` per strategy is its state.
* ``ledger_adjustments`` (hash-chained, insert-only), ``ledger_exchange_days`` and
  ``ledger_exchange_positions`` (the exchange's own numbers the trade engine publishes).

Conventions are those of ``models.py``. Scope columns that mean "none" are ``''`` rather than
NULL so that unique keys hold on every backend (NULLs are distinct in unique keys).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from dm_resources.metadata.models import MYSQL_TABLE_ARGS, Base, BigId, Money, UTCDateTime, _in

CONFIG_KINDS = ("application", "strategy")
CONFIG_ACTIONS = ("CREATE", "UPDATE", "DELETE", "ROLLBACK")
PARAMETER_TYPES = ("number", "bool", "string", "list", "object")
ADJUSTMENT_REASONS = ("phantom_superseded", "status_correction", "annotation")
RUN_MODES = ("dry_run", "apply")


class WriteAudit(Base):
    """One write request from a service: recorded after the answer, whatever it was."""

    __tablename__ = "api_write_audit"
    __table_args__ = (Index(None, "at"), Index(None, "service", "at"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    service: Mapped[str] = mapped_column(String(96))
    verified: Mapped[bool] = mapped_column(Boolean)
    auth_mode: Mapped[str] = mapped_column(String(8))
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(255))
    target: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[int] = mapped_column(Integer)


class StrategyConfig(Base):
    """The current configuration of one scope: the application, a strategy, or its symbol/side override."""

    __tablename__ = "strategy_configs"
    __table_args__ = (
        UniqueConstraint("kind", "strategy_id", "symbol", "side"),
        CheckConstraint(_in("kind", CONFIG_KINDS), name="kind"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    strategy_id: Mapped[str] = mapped_column(String(128))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(16))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(128))
    service: Mapped[str] = mapped_column(String(96))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)


class StrategyConfigVersion(Base):
    """One change of one scope (who, why, before, after); never updated nor deleted."""

    __tablename__ = "strategy_config_versions"
    __table_args__ = (
        UniqueConstraint("kind", "strategy_id", "symbol", "side", "version"),
        Index(None, "strategy_id", "changed_at"),
        Index(None, "changed_at"),
        CheckConstraint(_in("action", CONFIG_ACTIONS), name="action"),
        CheckConstraint(_in("kind", CONFIG_KINDS), name="kind"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    strategy_id: Mapped[str] = mapped_column(String(128))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    parameters: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    changed_by: Mapped[str] = mapped_column(String(128))
    service: Mapped[str] = mapped_column(String(96))
    reason: Mapped[str | None] = mapped_column(Text)
    rollback_to: Mapped[int | None] = mapped_column(Integer)
    changed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class StrategyParameter(Base):
    """A parameter a strategy declares: its name and the JSON type of its values."""

    __tablename__ = "strategy_parameters"
    __table_args__ = (
        UniqueConstraint("strategy_id", "name"),
        CheckConstraint(_in("type", PARAMETER_TYPES), name="type"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    strategy_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16))
    declared_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    declared_by: Mapped[str] = mapped_column(String(128))


class LifecycleEvent(Base):
    """A strategy's transition; ``(strategy_id, seq)`` is unique, so two racing transitions cannot both land."""

    __tablename__ = "strategy_lifecycle_events"
    __table_args__ = (
        UniqueConstraint("event_id"),
        UniqueConstraint("strategy_id", "seq"),
        Index(None, "decision_id"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32))
    strategy_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(Integer)
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    transitioned_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    service: Mapped[str | None] = mapped_column(String(96))
    recorded_by: Mapped[str] = mapped_column(String(96))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    decision_id: Mapped[str | None] = mapped_column(String(128))
    transitioned_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class LedgerAdjustment(Base):
    """A correction of a ledger row, hash-chained: ``prev_hash`` is unique, so the chain cannot fork."""

    __tablename__ = "ledger_adjustments"
    __table_args__ = (
        UniqueConstraint("adjustment_id"),
        UniqueConstraint("prev_hash"),
        Index(None, "target_table", "target_key"),
        Index(None, "applied_at"),
        CheckConstraint(_in("reason_code", ADJUSTMENT_REASONS), name="reason_code"),
        CheckConstraint(_in("run_mode", RUN_MODES), name="run_mode"),
        MYSQL_TABLE_ARGS,
    )

    chain_position: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    adjustment_id: Mapped[str] = mapped_column(String(64))
    applied_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    applied_by: Mapped[str] = mapped_column(String(255))
    approved_by: Mapped[str] = mapped_column(String(255))
    target_table: Mapped[str] = mapped_column(String(64))
    target_key: Mapped[str] = mapped_column(String(255))
    before: Mapped[dict[str, Any]] = mapped_column(JSON)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason_code: Mapped[str] = mapped_column(String(32))
    evidence_ref: Mapped[str] = mapped_column(String(512))
    run_mode: Mapped[str] = mapped_column(String(8))
    dry_run_adjustment_id: Mapped[str | None] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(96))
    prev_hash: Mapped[str] = mapped_column(String(64))  # '' for the first row of the chain
    row_hash: Mapped[str] = mapped_column(String(64))


class ExchangeDay(Base):
    """One revision of the exchange's income for a UTC day; a changed payload is a new revision."""

    __tablename__ = "ledger_exchange_days"
    __table_args__ = (UniqueConstraint("day", "revision"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    day: Mapped[dt.date] = mapped_column(Date)
    revision: Mapped[int] = mapped_column(Integer)
    is_final: Mapped[bool] = mapped_column(Boolean)
    row_count: Mapped[int] = mapped_column(Integer)
    first_income_time_ms: Mapped[int | None] = mapped_column(BigInteger)
    last_income_time_ms: Mapped[int | None] = mapped_column(BigInteger)
    wallet_balance: Mapped[Any] = mapped_column(Money)
    balance_as_of_ms: Mapped[int] = mapped_column(BigInteger)
    income_after_day_end: Mapped[dict[str, str]] = mapped_column(JSON)
    rows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    realized_pnl: Mapped[Any] = mapped_column(Money)
    commission: Mapped[Any] = mapped_column(Money)
    funding_fee: Mapped[Any] = mapped_column(Money)
    other_income: Mapped[Any] = mapped_column(Money)
    payload_hash: Mapped[str] = mapped_column(String(64))
    source_run_id: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    service: Mapped[str] = mapped_column(String(96))


class ExchangePositions(Base):
    """The exchange's open positions at ``as_of_ms``, as the trade engine read them."""

    __tablename__ = "ledger_exchange_positions"
    __table_args__ = (UniqueConstraint("as_of_ms"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    as_of_ms: Mapped[int] = mapped_column(BigInteger)
    source_run_id: Mapped[str] = mapped_column(String(128))
    payload_hash: Mapped[str] = mapped_column(String(64))
    position_count: Mapped[int] = mapped_column(Integer)
    rows: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    service: Mapped[str] = mapped_column(String(96))
