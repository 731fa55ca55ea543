"""Initial metadata schema: datasets, audit_logs, health_metrics, backfill_jobs, lineage_records,
confirmed_missing.

Written out in plain SQLAlchemy types (not imported from models.py) so the migration keeps
describing this revision when the models move on; tests/test_metadata_store.py checks
that models and migrations agree.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _utc() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def _big_id() -> sa.Column:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("interval", sa.String(8), nullable=True),
        sa.Column("collection", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("schema", sa.JSON(), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.Column("first_time", sa.BigInteger(), nullable=True),
        sa.Column("last_time", sa.BigInteger(), nullable=True),
        sa.Column("freshness_seconds", sa.Double(), nullable=True),
        sa.Column("health_score", sa.Double(), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        **MYSQL,
    )
    op.create_index("ix_datasets_kind_symbol", "datasets", ["kind", "symbol"])
    op.create_index("ix_datasets_symbol", "datasets", ["symbol"])

    op.create_table(
        "audit_logs",
        _big_id(),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("check_name", sa.String(128), nullable=False),
        sa.Column("asset_key", sa.String(255), nullable=True),
        sa.Column("partition_key", sa.String(255), nullable=True),
        sa.Column("symbol", sa.String(32), nullable=True),
        sa.Column("interval", sa.String(8), nullable=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_logs"),
        sa.CheckConstraint("severity IN ('INFO', 'WARN', 'ERROR', 'CRITICAL')", name="ck_audit_logs_severity"),
        **MYSQL,
    )
    op.create_index("ix_audit_logs_symbol_created_at", "audit_logs", ["symbol", "created_at"])
    op.create_index("ix_audit_logs_created_at", "audit_logs", ["created_at"])
    op.create_index("ix_audit_logs_check_name_created_at", "audit_logs", ["check_name", "created_at"])

    op.create_table(
        "health_metrics",
        _big_id(),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("interval", sa.String(8), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("completeness", sa.Double(), nullable=False),
        sa.Column("freshness", sa.Double(), nullable=False),
        sa.Column("consistency", sa.Double(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("computed_at", _utc(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_health_metrics"),
        sa.UniqueConstraint("symbol", "interval", "day", name="uq_health_metrics_symbol_interval_day"),
        **MYSQL,
    )
    op.create_index("ix_health_metrics_day", "health_metrics", ["day"])

    op.create_table(
        "backfill_jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("symbols", sa.JSON(), nullable=False),
        sa.Column("interval", sa.String(8), nullable=True),
        sa.Column("start_time", sa.BigInteger(), nullable=True),
        sa.Column("end_time", sa.BigInteger(), nullable=True),
        sa.Column("partition_keys", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dagster_backfill_id", sa.String(64), nullable=True),
        sa.Column("dagster_run_ids", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_backfill_jobs"),
        sa.CheckConstraint(
            "status IN ('queued', 'requested', 'running', 'success', 'failure', 'canceled', 'partial')",
            name="ck_backfill_jobs_status",
        ),
        sa.CheckConstraint("origin IN ('sensor', 'schedule', 'ui', 'api')", name="ck_backfill_jobs_origin"),
        **MYSQL,
    )
    op.create_index("ix_backfill_jobs_status_created_at", "backfill_jobs", ["status", "created_at"])
    op.create_index("ix_backfill_jobs_created_at", "backfill_jobs", ["created_at"])
    op.create_index("ix_backfill_jobs_dagster_backfill_id", "backfill_jobs", ["dagster_backfill_id"])

    op.create_table(
        "lineage_records",
        _big_id(),
        sa.Column("upstream", sa.String(255), nullable=False),
        sa.Column("downstream", sa.String(255), nullable=False),
        sa.Column("transformation", sa.Text(), nullable=True),
        sa.Column("asset_group", sa.String(128), nullable=True),
        sa.Column("recorded_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lineage_records"),
        sa.UniqueConstraint("upstream", "downstream", name="uq_lineage_records_upstream_downstream"),
        **MYSQL,
    )
    op.create_index("ix_lineage_records_downstream", "lineage_records", ["downstream"])

    op.create_table(
        "confirmed_missing",
        _big_id(),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("interval", sa.String(8), nullable=False),
        sa.Column("open_time", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_seen", _utc(), nullable=False),
        sa.Column("confirmed_at", _utc(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_confirmed_missing"),
        sa.UniqueConstraint("symbol", "interval", "open_time", name="uq_confirmed_missing_symbol_interval_open_time"),
        **MYSQL,
    )


def downgrade() -> None:
    for table in ("confirmed_missing", "lineage_records", "backfill_jobs", "health_metrics", "audit_logs", "datasets"):
        op.drop_table(table)
