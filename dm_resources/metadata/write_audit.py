"""The write audit trail: one row per write request a service made, with who made it.

Rows are added after the answer is sent, so the trail records refused writes too (with their
status) and never slows the write itself down; reads are for operators and tests.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Table, insert, select

from dm_resources.metadata import service_models
from dm_resources.metadata.store import MetadataStore

WRITE_AUDIT: Table = service_models.WriteAudit.__table__  # type: ignore[assignment]  # declared FromClause, is a Table


@dataclass(frozen=True)
class WriteRecord:
    at: dt.datetime
    service: str
    verified: bool
    auth_mode: str
    method: str
    route: str
    target: str | None
    status: int


def record_write(store: MetadataStore, rec: WriteRecord) -> None:
    values = {
        "at": rec.at,
        "service": rec.service[:96],
        "verified": rec.verified,
        "auth_mode": rec.auth_mode,
        "method": rec.method[:8],
        "route": rec.route[:255],
        "target": rec.target[:255] if rec.target else None,
        "status": rec.status,
    }
    store._write(lambda conn: conn.execute(insert(WRITE_AUDIT).values(values)))


def recent_writes(store: MetadataStore, *, service: str | None = None, limit: int = 100) -> list[WriteRecord]:
    """Newest first."""
    t = WRITE_AUDIT
    stmt = select(t).order_by(t.c.id.desc()).limit(limit)
    if service is not None:
        stmt = stmt.where(t.c.service == service)
    with store._read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    return [WriteRecord(**{k: v for k, v in r.items() if k != "id"}) for r in rows]
