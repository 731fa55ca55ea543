"""The trading platform's records: positions and daily_pnl.

Written out in plain SQLAlchemy types (not imported from models.py), as 0001 is.
``uq_positions_symbol_position_side_open_slot`` is what makes the trade engine's
concurrent upserts of an open position end with one row (see models.Position).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _utc() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _big_id() -> sa.Column:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True)


def _money(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.Numeric(38, 18), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "positions",
        _big_id(),
        sa.Column("position_id", sa.String(64), nullable=False),
        sa.Column("strategy_id", sa.String(128), nullable=True),
        sa.Column("exchange", sa.String(32), nullable=True),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("position_side", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("open_slot", sa.Integer(), nullable=True),
        _money("entry_price"),
        _money("quantity"),
        sa.Column("entry_time", _utc(), nullable=True),
        _money("stop_loss"),
        _money("take_profit"),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("exchange_position_id", sa.String(128), nullable=True),
        sa.Column("entry_order_id", sa.String(128), nullable=True),
        sa.Column("entry_trade_ids", sa.JSON(), nullable=True),
        sa.Column("commission_asset", sa.String(16), nullable=True),
        _money("commission_total"),
        _money("avg_price"),
        _money("unrealized_pnl"),
        _money("realized_pnl"),
        _money("total_cost"),
        _money("total_value"),
        sa.Column("last_update", _utc(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=True),
        sa.Column("closed_at", _utc(), nullable=True),
        _money("final_realized_pnl"),
        _money("exit_price"),
        sa.Column("exit_time", _utc(), nullable=True),
        sa.Column("exit_order_id", sa.String(128), nullable=True),
        sa.Column("exit_trade_ids", sa.JSON(), nullable=True),
        _money("pnl"),
        _money("pnl_pct"),
        _money("pnl_after_fees"),
        sa.Column("duration_seconds", sa.Double(), nullable=True),
        sa.Column("close_reason", sa.String(255), nullable=True),
        _money("final_commission"),
        sa.PrimaryKeyConstraint("id", name="pk_positions"),
        sa.UniqueConstraint("position_id", name="uq_positions_position_id"),
        sa.UniqueConstraint("symbol", "position_side", "open_slot", name="uq_positions_symbol_position_side_open_slot"),
        sa.CheckConstraint("status IN ('open', 'closed')", name="ck_positions_status"),
        **MYSQL,
    )
    op.create_index("ix_positions_status_symbol", "positions", ["status", "symbol"])
    op.create_index("ix_positions_strategy_id_entry_time", "positions", ["strategy_id", "entry_time"])
    op.create_index("ix_positions_closed_at", "positions", ["closed_at"])

    op.create_table(
        "daily_pnl",
        _big_id(),
        sa.Column("date", sa.Date(), nullable=False),
        _money("daily_pnl", nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_daily_pnl"),
        sa.UniqueConstraint("date", name="uq_daily_pnl_date"),
        **MYSQL,
    )


def downgrade() -> None:
    op.drop_table("daily_pnl")
    op.drop_table("positions")
