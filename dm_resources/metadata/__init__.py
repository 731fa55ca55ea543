"""Metadata database (MySQL/MariaDB, SQLite embedded): models, migrations and :class:`MetadataStore`.

``python -m dm_resources.metadata upgrade`` applies the migrations to ``DM_METADATA_URL``.
"""

from dm_resources.metadata.schemas import (
    ACTIVE_BACKFILL_STATUSES,
    AuditLogIn,
    AuditLogRecord,
    BackfillJobRecord,
    BackfillJobUpdate,
    DatasetIn,
    DatasetRecord,
    HealthMetricIn,
    HealthMetricRecord,
    LineageEdge,
    LineageView,
    MissingRecord,
    SchemaField,
    dataset_id,
)
from dm_resources.metadata.store import MetadataStore, head_revision, make_engine, upgrade, walk_lineage

__all__ = [
    "ACTIVE_BACKFILL_STATUSES",
    "AuditLogIn",
    "AuditLogRecord",
    "BackfillJobRecord",
    "BackfillJobUpdate",
    "DatasetIn",
    "DatasetRecord",
    "HealthMetricIn",
    "HealthMetricRecord",
    "LineageEdge",
    "LineageView",
    "MetadataStore",
    "MissingRecord",
    "SchemaField",
    "dataset_id",
    "head_revision",
    "make_engine",
    "upgrade",
    "walk_lineage",
]
