"""``archive_files``: which Binance archive files the candles came from, and which were refused.

One row per file name, updated on every fetch (``fetches`` counts them), so the row always says
what the last fetch found: ``accepted`` with its sha256, size and rows (the provenance the catalog
shows beside archive candles), ``refused`` with the reason, or ``missing`` (a 404).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Table, and_, select

from dm_resources.metadata import models
from dm_resources.metadata.engine import utcnow
from dm_resources.metadata.store import MetadataStore

ARCHIVE_FILES: Table = models.ArchiveFile.__table__  # type: ignore[assignment]  # declared FromClause, is a Table

ArchiveStatus = Literal["accepted", "refused", "missing"]


class ArchiveFileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    symbol: str = Field(max_length=32)
    interval: str = Field(default="1m", max_length=8)
    period: Literal["monthly", "daily"]
    period_start: int
    period_end: int
    url: str = Field(max_length=512)
    status: ArchiveStatus
    sha256: str | None = Field(default=None, max_length=64)
    size: int | None = None
    rows: int | None = None
    reason: str | None = None
    fetched_at: dt.datetime | None = None
    run_id: str | None = Field(default=None, max_length=64)


class ArchiveFileRecord(ArchiveFileIn):
    model_config = ConfigDict(from_attributes=True, extra="forbid")

    id: int
    fetched_at: dt.datetime
    fetches: int


def record_archive_files(meta: MetadataStore, rows: Sequence[ArchiveFileIn]) -> int:
    """Upsert the outcome of each fetch (one transaction); returns how many rows were written."""
    if not rows:
        return 0
    now = utcnow()
    latest = {r.name: r for r in rows}  # a file fetched twice in one batch: the last outcome wins
    names = sorted(latest)

    def run(conn: Connection) -> None:
        t = ARCHIVE_FILES
        seen = dict(conn.execute(select(t.c.name, t.c.fetches).where(t.c.name.in_(names))).tuples().all())
        values = [
            {**latest[n].model_dump(), "fetched_at": latest[n].fetched_at or now, "fetches": seen.get(n, 0) + 1}
            for n in names
        ]
        update_cols = [c for c in values[0] if c != "name"]
        meta._upsert(conn, t, values, ("name",), update_cols)

    meta._write(run)
    return len(names)


def archive_files(
    meta: MetadataStore,
    symbol: str | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    *,
    status: ArchiveStatus | None = None,
    limit: int = 1000,
) -> list[ArchiveFileRecord]:
    """Files whose period overlaps ``[start_ms, end_ms)``, oldest period first."""
    t = ARCHIVE_FILES
    conds = []
    if symbol is not None:
        conds.append(t.c.symbol == symbol)
    if start_ms is not None:
        conds.append(t.c.period_end > start_ms)
    if end_ms is not None:
        conds.append(t.c.period_start < end_ms)
    if status is not None:
        conds.append(t.c.status == status)
    q = select(t).order_by(t.c.symbol, t.c.period_start, t.c.period).limit(limit)
    if conds:
        q = q.where(and_(*conds))
    with meta._read() as conn:
        return [ArchiveFileRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]
