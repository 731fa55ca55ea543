"""The platform services' records: write audit, strategy config versions, lifecycle, ledger.

``positions`` gains the fields the trade engine sends beside its 37 columns, ``pnl_unknown``
and the status ``superseded`` (a ledger correction).

Written out in plain SQLAlchemy types (not imported from the models), as 0001 and 0002 are.
See ``service_models.py`` for what each table is for.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _utc() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _big_id(name: str = "id") -> sa.Column:
    return sa.Column(name, sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True)


def _money(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.Numeric(38, 18), nullable=nullable)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _scope() -> list[sa.Column]:
    return [
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("strategy_id", sa.String(128), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(16), nullable=False),
    ]


POSITION_EXTRAS = (
    ("entry_commission", sa.Numeric(38, 18)),
    ("fee_status", sa.String(32)),
    ("closed_by_strategy_id", sa.String(128)),
    ("stop_loss_order_id", sa.String(128)),
    ("take_profit_order_id", sa.String(128)),
    ("pnl_unknown", sa.Boolean()),
)


def _positions_status(statuses: tuple[str, ...]) -> None:
    with op.batch_alter_table("positions") as batch:
        batch.drop_constraint("ck_positions_status", type_="check")
        batch.create_check_constraint("ck_positions_status", _in("status", statuses))


def upgrade() -> None:
    with op.batch_alter_table("positions") as batch:
        for name, type_ in POSITION_EXTRAS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    _positions_status(("open", "closed", "superseded"))

    op.create_table(
        "api_write_audit",
        _big_id(),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("service", sa.String(96), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("auth_mode", sa.String(8), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("target", sa.String(255), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_write_audit"),
        **MYSQL,
    )
    op.create_index("ix_api_write_audit_at", "api_write_audit", ["at"])
    op.create_index("ix_api_write_audit_service_at", "api_write_audit", ["service", "at"])

    op.create_table(
        "strategy_configs",
        _big_id(),
        *_scope(),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False),
        sa.Column("service", sa.String(96), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_strategy_configs"),
        sa.UniqueConstraint(
            "kind", "strategy_id", "symbol", "side", name="uq_strategy_configs_kind_strategy_id_symbol_side"
        ),
        sa.CheckConstraint(_in("kind", ("application", "strategy")), name="ck_strategy_configs_kind"),
        **MYSQL,
    )
    op.create_table(
        "strategy_config_versions",
        _big_id(),
        *_scope(),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=True),
        sa.Column("previous", sa.JSON(), nullable=True),
        sa.Column("changed_by", sa.String(128), nullable=False),
        sa.Column("service", sa.String(96), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("rollback_to", sa.Integer(), nullable=True),
        sa.Column("changed_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_strategy_config_versions"),
        sa.UniqueConstraint(
            "kind",
            "strategy_id",
            "symbol",
            "side",
            "version",
            name="uq_strategy_config_versions_kind_strategy_id_symbol_side_version",
        ),
        sa.CheckConstraint(
            _in("action", ("CREATE", "UPDATE", "DELETE", "ROLLBACK")), name="ck_strategy_config_versions_action"
        ),
        sa.CheckConstraint(_in("kind", ("application", "strategy")), name="ck_strategy_config_versions_kind"),
        **MYSQL,
    )
    op.create_index(
        "ix_strategy_config_versions_strategy_id_changed_at", "strategy_config_versions", ["strategy_id", "changed_at"]
    )
    op.create_index("ix_strategy_config_versions_changed_at", "strategy_config_versions", ["changed_at"])
    op.create_table(
        "strategy_parameters",
        _big_id(),
        sa.Column("strategy_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("declared_at", _utc(), nullable=False),
        sa.Column("declared_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_strategy_parameters"),
        sa.UniqueConstraint("strategy_id", "name", name="uq_strategy_parameters_strategy_id_name"),
        sa.CheckConstraint(
            _in("type", ("number", "bool", "string", "list", "object")), name="ck_strategy_parameters_type"
        ),
        **MYSQL,
    )

    op.create_table(
        "strategy_lifecycle_events",
        _big_id(),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("strategy_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=True),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("transitioned_by", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("service", sa.String(96), nullable=True),
        sa.Column("recorded_by", sa.String(96), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("decision_id", sa.String(128), nullable=True),
        sa.Column("transitioned_at", _utc(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_strategy_lifecycle_events"),
        sa.UniqueConstraint("event_id", name="uq_strategy_lifecycle_events_event_id"),
        sa.UniqueConstraint("strategy_id", "seq", name="uq_strategy_lifecycle_events_strategy_id_seq"),
        **MYSQL,
    )
    op.create_index("ix_strategy_lifecycle_events_decision_id", "strategy_lifecycle_events", ["decision_id"])

    op.create_table(
        "ledger_adjustments",
        _big_id("chain_position"),
        sa.Column("adjustment_id", sa.String(64), nullable=False),
        sa.Column("applied_at", _utc(), nullable=False),
        sa.Column("applied_by", sa.String(255), nullable=False),
        sa.Column("approved_by", sa.String(255), nullable=False),
        sa.Column("target_table", sa.String(64), nullable=False),
        sa.Column("target_key", sa.String(255), nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("reason_code", sa.String(32), nullable=False),
        sa.Column("evidence_ref", sa.String(512), nullable=False),
        sa.Column("run_mode", sa.String(8), nullable=False),
        sa.Column("dry_run_adjustment_id", sa.String(64), nullable=True),
        sa.Column("service", sa.String(96), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("chain_position", name="pk_ledger_adjustments"),
        sa.UniqueConstraint("adjustment_id", name="uq_ledger_adjustments_adjustment_id"),
        sa.UniqueConstraint("prev_hash", name="uq_ledger_adjustments_prev_hash"),
        sa.CheckConstraint(
            _in("reason_code", ("phantom_superseded", "status_correction", "annotation")),
            name="ck_ledger_adjustments_reason_code",
        ),
        sa.CheckConstraint(_in("run_mode", ("dry_run", "apply")), name="ck_ledger_adjustments_run_mode"),
        **MYSQL,
    )
    op.create_index(
        "ix_ledger_adjustments_target_table_target_key", "ledger_adjustments", ["target_table", "target_key"]
    )
    op.create_index("ix_ledger_adjustments_applied_at", "ledger_adjustments", ["applied_at"])
    op.create_table(
        "ledger_exchange_days",
        _big_id(),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("is_final", sa.Boolean(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("first_income_time_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_income_time_ms", sa.BigInteger(), nullable=True),
        _money("wallet_balance"),
        sa.Column("balance_as_of_ms", sa.BigInteger(), nullable=False),
        sa.Column("income_after_day_end", sa.JSON(), nullable=False),
        sa.Column("rows", sa.JSON(), nullable=False),
        _money("realized_pnl"),
        _money("commission"),
        _money("funding_fee"),
        _money("other_income"),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("source_run_id", sa.String(128), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("service", sa.String(96), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_exchange_days"),
        sa.UniqueConstraint("day", "revision", name="uq_ledger_exchange_days_day_revision"),
        **MYSQL,
    )
    op.create_table(
        "ledger_exchange_positions",
        _big_id(),
        sa.Column("as_of_ms", sa.BigInteger(), nullable=False),
        sa.Column("source_run_id", sa.String(128), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("position_count", sa.Integer(), nullable=False),
        sa.Column("rows", sa.JSON(), nullable=False),
        sa.Column("received_at", _utc(), nullable=False),
        sa.Column("service", sa.String(96), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_exchange_positions"),
        sa.UniqueConstraint("as_of_ms", name="uq_ledger_exchange_positions_as_of_ms"),
        **MYSQL,
    )


def downgrade() -> None:
    for table in (
        "ledger_exchange_positions",
        "ledger_exchange_days",
        "ledger_adjustments",
        "strategy_lifecycle_events",
        "strategy_parameters",
        "strategy_config_versions",
        "strategy_configs",
        "api_write_audit",
    ):
        op.drop_table(table)
    op.execute("UPDATE positions SET status = 'closed' WHERE status = 'superseded'")
    _positions_status(("open", "closed"))
    with op.batch_alter_table("positions") as batch:
        for name, _ in reversed(POSITION_EXTRAS):
            batch.drop_column(name)
