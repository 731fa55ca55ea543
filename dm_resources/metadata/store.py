"""The metadata store: audit results, health scores, backfill jobs, catalog, lineage, missing candles.

**Core, not ORM sessions.** Every method is one short transaction over SQLAlchemy Core and
returns pydantic records (``schemas.py``): nothing bound to a closed session escapes, and
the API can serialise the results directly. Engines, SQLite sharing, retries, upserts and
migrations are in ``engine.py``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)

from dm_resources.metadata import models
from dm_resources.metadata.engine import SqlStore, head_revision, make_engine, upgrade, utcnow
from dm_resources.metadata.schemas import (
    AuditLogIn,
    AuditLogRecord,
    BackfillJobRecord,
    BackfillJobUpdate,
    BackfillOrigin,
    BackfillStatus,
    DatasetIn,
    DatasetRecord,
    HealthMetricIn,
    HealthMetricRecord,
    LineageEdge,
    LineageView,
    MissingRecord,
)

# The tables, as SQLAlchemy Core ``Table``s of the declarative models.
DATASETS: Table = models.Dataset.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
AUDIT_LOGS: Table = models.AuditLog.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
HEALTH: Table = models.HealthMetric.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
BACKFILLS: Table = models.BackfillJob.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
LINEAGE: Table = models.LineageRecord.__table__  # type: ignore[assignment]  # declared FromClause, is a Table
MISSING: Table = models.ConfirmedMissing.__table__  # type: ignore[assignment]  # declared FromClause, is a Table

__all__ = ["MetadataStore", "head_revision", "make_engine", "upgrade", "utcnow", "walk_lineage"]


def walk_lineage(edges: Iterable[LineageEdge], node: str, depth: int | None = 1) -> LineageView:
    """Edges above and below ``node`` up to ``depth`` hops (None: the whole connected ancestry/descent)."""
    by_down: dict[str, list[LineageEdge]] = {}
    by_up: dict[str, list[LineageEdge]] = {}
    for e in edges:
        by_down.setdefault(e.downstream, []).append(e)
        by_up.setdefault(e.upstream, []).append(e)

    def walk(index: dict[str, list[LineageEdge]], next_node: Callable[[LineageEdge], str]) -> list[LineageEdge]:
        found: list[LineageEdge] = []
        seen_nodes = {node}
        frontier = [node]
        hops = 0
        while frontier and (depth is None or hops < depth):
            hops += 1
            nxt: list[str] = []
            for n in frontier:
                for e in index.get(n, []):
                    found.append(e)
                    other = next_node(e)
                    if other not in seen_nodes:
                        seen_nodes.add(other)
                        nxt.append(other)
            frontier = nxt
        return found

    return LineageView(
        node=node,
        upstream=walk(by_down, lambda e: e.upstream),
        downstream=walk(by_up, lambda e: e.downstream),
    )


# --- the store ---------------------------------------------------------------------------------


class MetadataStore(SqlStore):
    """Plain class over SQLAlchemy, used by the ingest service, Dagster and the API alike."""

    # audit logs ----------------------------------------------------------------------------

    def record_audit(self, rows: Sequence[AuditLogIn]) -> int:
        """Store check results (one transaction for the batch); returns how many were written."""
        if not rows:
            return 0
        now = utcnow()
        values = [{**r.model_dump(), "created_at": r.created_at or now} for r in rows]
        self._write(lambda conn: conn.execute(insert(AUDIT_LOGS), values))
        return len(values)

    def audit_logs(
        self,
        symbol: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 100,
        *,
        check_name: str | None = None,
        passed: bool | None = None,
        partition_key: str | None = None,
        run_id: str | None = None,
    ) -> list[AuditLogRecord]:
        """Newest first."""
        t = AUDIT_LOGS
        q = select(t).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
        if symbol is not None:
            q = q.where(t.c.symbol == symbol)
        if since is not None:
            q = q.where(t.c.created_at >= since)
        if check_name is not None:
            q = q.where(t.c.check_name == check_name)
        if passed is not None:
            q = q.where(t.c.passed == passed)
        if partition_key is not None:
            q = q.where(t.c.partition_key == partition_key)
        if run_id is not None:
            q = q.where(t.c.run_id == run_id)
        with self._read() as conn:
            return [AuditLogRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]

    def audited(self, run_id: str) -> set[tuple[str, str]]:
        """The (partition_key, interval) pairs whose checks the run recorded (event rows aside).

        Plain tuples of three columns: reading the run's whole rows as records (thousands for a
        bulk run) only to learn this took longer than the quality step's other work.
        """
        t = AUDIT_LOGS
        q = select(t.c.partition_key, t.c.interval, t.c.details).where(t.c.run_id == run_id)
        with self._read() as conn:
            return {(pk, iv) for pk, iv, details in conn.execute(q) if pk and iv and not (details or {}).get("event")}

    # health ------------------------------------------------------------------------------

    def upsert_health(self, rows: Sequence[HealthMetricIn]) -> int:
        """Write daily health rows; a row for an existing (symbol, interval, day) replaces it in place."""
        if not rows:
            return 0
        now = utcnow()
        values = [{**r.model_dump(), "computed_at": r.computed_at or now} for r in rows]
        key = ("symbol", "interval", "day")
        update_cols = [c for c in values[0] if c not in key]
        self._write(lambda conn: self._upsert(conn, HEALTH, values, key, update_cols))
        return len(values)

    def health(
        self,
        symbol: str | None = None,
        interval: str | None = None,
        day_from: dt.date | None = None,
        day_to: dt.date | None = None,
        run_id: str | None = None,
    ) -> list[HealthMetricRecord]:
        """Rows ordered by symbol, interval, day; ``day_from``/``day_to`` are inclusive."""
        t = HEALTH
        q = select(t).order_by(t.c.symbol, t.c.interval, t.c.day)
        if symbol is not None:
            q = q.where(t.c.symbol == symbol)
        if interval is not None:
            q = q.where(t.c.interval == interval)
        if day_from is not None:
            q = q.where(t.c.day >= day_from)
        if day_to is not None:
            q = q.where(t.c.day <= day_to)
        if run_id is not None:
            q = q.where(t.c.run_id == run_id)
        with self._read() as conn:
            return [HealthMetricRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]

    def latest_health_by_symbol(self, interval: str | None = None) -> dict[str, HealthMetricRecord]:
        """Each symbol's row for its latest day; across intervals the *worst* score wins.

        A pair summary must not look healthy because its freshest row is: 1m at 100 beside an
        order book at 60 reports the 60 (ties: the most recently computed row).
        """
        t = HEALTH
        latest = select(t.c.symbol, func.max(t.c.day).label("day")).group_by(t.c.symbol)
        if interval is not None:
            latest = latest.where(t.c.interval == interval)
        sub = latest.subquery()
        q = select(t).join(sub, and_(t.c.symbol == sub.c.symbol, t.c.day == sub.c.day))
        if interval is not None:
            q = q.where(t.c.interval == interval)
        out: dict[str, HealthMetricRecord] = {}
        with self._read() as conn:
            for r in conn.execute(q):
                rec = HealthMetricRecord.model_validate(dict(r._mapping))
                prev = out.get(rec.symbol)
                if prev is None or (-rec.score, rec.computed_at, rec.id) > (-prev.score, prev.computed_at, prev.id):
                    out[rec.symbol] = rec
        return dict(sorted(out.items()))

    # backfill jobs -------------------------------------------------------------------------

    def create_backfill_job(
        self,
        *,
        origin: BackfillOrigin,
        symbols: Sequence[str],
        interval: str | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        partition_keys: Sequence[str] | None = None,
        status: BackfillStatus = "queued",
        requested_by: str | None = None,
        dagster_backfill_id: str | None = None,
        job_id: str | None = None,
    ) -> str:
        """Record a backfill request and return its id (a uuid4 unless ``job_id`` is given)."""
        now = utcnow()
        record = BackfillJobRecord(
            id=job_id or str(uuid.uuid4()),
            created_at=now,
            updated_at=now,
            origin=origin,
            symbols=list(symbols),
            interval=interval,
            start_time=start_time,
            end_time=end_time,
            partition_keys=list(partition_keys) if partition_keys is not None else None,
            status=status,
            dagster_backfill_id=dagster_backfill_id,
            dagster_run_ids=None,
            error=None,
            requested_by=requested_by,
        )
        self._write(lambda conn: conn.execute(insert(BACKFILLS), [record.model_dump()]))
        return record.id

    def update_backfill_job(self, job_id: str, **fields: Any) -> BackfillJobRecord:
        """Change the named fields (validated by :class:`BackfillJobUpdate`); KeyError if no such job."""
        changes = BackfillJobUpdate.model_validate(fields).model_dump(include=set(fields))
        changes["updated_at"] = utcnow()

        def run(conn: Connection) -> None:
            res = conn.execute(update(BACKFILLS).where(BACKFILLS.c.id == job_id).values(**changes))
            if res.rowcount == 0:
                raise KeyError(job_id)

        self._write(run)
        job = self.get_backfill_job(job_id)
        if job is None:  # deleted between the two statements
            raise KeyError(job_id)
        return job

    def get_backfill_job(self, job_id: str) -> BackfillJobRecord | None:
        with self._read() as conn:
            row = conn.execute(select(BACKFILLS).where(BACKFILLS.c.id == job_id)).first()
        return BackfillJobRecord.model_validate(dict(row._mapping)) if row is not None else None

    def list_backfill_jobs(
        self, status: BackfillStatus | Sequence[BackfillStatus] | None = None, limit: int = 100
    ) -> list[BackfillJobRecord]:
        """Newest first; ``status`` may be one status or several (e.g. ``ACTIVE_BACKFILL_STATUSES``)."""
        t = BACKFILLS
        q = select(t).order_by(t.c.created_at.desc(), t.c.id).limit(limit)
        if isinstance(status, str):
            q = q.where(t.c.status == status)
        elif status is not None:
            q = q.where(t.c.status.in_(list(status)))
        with self._read() as conn:
            return [BackfillJobRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]

    # datasets ------------------------------------------------------------------------------

    def upsert_dataset(self, dataset: DatasetIn) -> str:
        """Create or update one catalog entry; returns its id."""
        return self.upsert_datasets([dataset])[0]

    def upsert_datasets(self, datasets: Sequence[DatasetIn]) -> list[str]:
        """Create or update entries in one transaction; on update only the fields each caller set change."""
        if not datasets:
            return []
        now = utcnow()
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        ids: list[str] = []
        for d in datasets:
            row = d.model_dump(by_alias=True, exclude={"id"})
            row["id"] = d.key()
            row["updated_at"] = now
            ids.append(row["id"])
            set_fields = {"schema" if f == "schema_" else f for f in d.model_fields_set} - {"id"}
            update_cols = tuple(sorted(set_fields | {"updated_at"}))
            groups.setdefault(update_cols, []).append(row)

        def run(conn: Connection) -> None:
            for update_cols, rows in groups.items():
                self._upsert(conn, DATASETS, rows, ("id",), update_cols)

        self._write(run)
        return ids

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        with self._read() as conn:
            row = conn.execute(select(DATASETS).where(DATASETS.c.id == dataset_id)).first()
        return DatasetRecord.model_validate(dict(row._mapping)) if row is not None else None

    def list_datasets(self, kind: str | None = None, symbol: str | None = None) -> list[DatasetRecord]:
        t = DATASETS
        q = select(t).order_by(t.c.id)
        if kind is not None:
            q = q.where(t.c.kind == kind)
        if symbol is not None:
            q = q.where(t.c.symbol == symbol)
        with self._read() as conn:
            return [DatasetRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]

    # lineage -------------------------------------------------------------------------------

    def replace_lineage(self, records: Sequence[LineageEdge]) -> int:
        """Make the stored graph exactly ``records``; calling it again with the same edges changes nothing.

        Edges no longer present are deleted; kept edges keep their ``recorded_at`` (the time
        the edge first appeared) and take the new transformation/group text. Returns the
        number of edges stored.
        """
        edges = {(e.upstream, e.downstream): e for e in records}  # last one wins on duplicates
        now = utcnow()
        rows = [
            {
                "upstream": u,
                "downstream": d,
                "transformation": e.transformation,
                "asset_group": e.asset_group,
                "recorded_at": e.recorded_at or now,
            }
            for (u, d), e in edges.items()
        ]

        def run(conn: Connection) -> None:
            # FOR UPDATE serialises concurrent replacers on MySQL (their delete + upsert otherwise
            # deadlock on InnoDB gap locks); SQLite already holds the write lock (BEGIN IMMEDIATE).
            existing = conn.execute(
                select(LINEAGE.c.id, LINEAGE.c.upstream, LINEAGE.c.downstream).with_for_update()
            ).all()
            stale = [r.id for r in existing if (r.upstream, r.downstream) not in edges]
            for i in range(0, len(stale), 500):
                conn.execute(delete(LINEAGE).where(LINEAGE.c.id.in_(stale[i : i + 500])))
            self._upsert(conn, LINEAGE, rows, ("upstream", "downstream"), ("transformation", "asset_group"))

        self._write(run)
        return len(rows)

    def lineage(self) -> list[LineageEdge]:
        """The whole stored graph, ordered by (upstream, downstream)."""
        t = LINEAGE
        q = select(t.c.upstream, t.c.downstream, t.c.transformation, t.c.asset_group, t.c.recorded_at)
        with self._read() as conn:
            rows = conn.execute(q.order_by(t.c.upstream, t.c.downstream)).all()
        return [LineageEdge.model_validate(dict(r._mapping)) for r in rows]

    def lineage_for(self, node: str, depth: int | None = 1) -> LineageView:
        """Edges into and out of ``node``; ``depth`` > 1 (or None for all) follows them further."""
        # The asset graph is small (hundreds of edges): one read and a walk in Python beats
        # a recursive CTE that MySQL 5.7 / older MariaDB would not run.
        return walk_lineage(self.lineage(), node, depth)

    # confirmed missing ---------------------------------------------------------------------

    def mark_missing(
        self,
        symbol: str,
        interval: str,
        open_times: Iterable[int],
        reason: str,
        confirm_after_attempts: int = 3,
    ) -> set[int]:
        """Count one more failed fill attempt for each open time; confirm those reaching the limit.

        Returns the open times (of those given) that are confirmed missing after this call,
        so the caller can stop retrying them at once.
        """
        if confirm_after_attempts < 1:
            raise ValueError("confirm_after_attempts must be >= 1")
        times = sorted({int(t) for t in open_times})
        if not times:
            return set()
        now = utcnow()
        first_confirmed = now if confirm_after_attempts <= 1 else None
        rows = [
            {
                "symbol": symbol,
                "interval": interval,
                "open_time": t,
                "attempts": 1,
                "first_seen": now,
                "confirmed_at": first_confirmed,
                "reason": reason,
            }
            for t in times
        ]
        t_ = MISSING
        # Constants are inline literals (int() keeps that safe): pymysql's executemany cannot
        # take bound parameters in the ON DUPLICATE KEY UPDATE clause.
        one: ColumnElement[int] = literal_column("1")
        limit: ColumnElement[int] = literal_column(str(int(confirm_after_attempts)))
        bumped = t_.c.attempts + one
        reached = and_(t_.c.confirmed_at.is_(None), bumped >= limit)

        def run(conn: Connection) -> set[int]:
            # The CASE reads the row's *old* values; MySQL evaluates SET clauses left to right
            # with earlier assignments visible, hence confirmed_at first, in an ordered list.
            # The confirmation time is this attempt's time, carried in the new row's first_seen.
            name = conn.dialect.name
            if name in ("mysql", "mariadb"):
                from sqlalchemy.dialects.mysql import insert as mysql_insert

                my = mysql_insert(t_)
                confirm = case((reached, my.inserted.first_seen), else_=t_.c.confirmed_at)
                stmt: Any = my.on_duplicate_key_update(
                    [("confirmed_at", confirm), ("attempts", bumped), ("reason", my.inserted.reason)]
                )
            else:
                if name == "sqlite":
                    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                    ins: Any = sqlite_insert(t_)
                else:
                    from sqlalchemy.dialects.postgresql import insert as pg_insert

                    ins = pg_insert(t_)
                confirm = case((reached, ins.excluded.first_seen), else_=t_.c.confirmed_at)
                stmt = ins.on_conflict_do_update(
                    index_elements=["symbol", "interval", "open_time"],
                    set_={"confirmed_at": confirm, "attempts": bumped, "reason": ins.excluded.reason},
                )
            conn.execute(stmt, rows)
            confirmed: set[int] = set()
            for i in range(0, len(times), 500):
                chunk = times[i : i + 500]
                q = select(t_.c.open_time).where(
                    t_.c.symbol == symbol,
                    t_.c.interval == interval,
                    t_.c.open_time.in_(chunk),
                    t_.c.confirmed_at.is_not(None),
                )
                confirmed.update(conn.execute(q).scalars())
            return confirmed

        return self._write(run)

    def confirmed_missing(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> set[int]:
        """Confirmed open times with ``start_ms <= open_time <= end_ms`` (inclusive, like Binance's range)."""
        t = MISSING
        q = select(t.c.open_time).where(
            t.c.symbol == symbol,
            t.c.interval == interval,
            t.c.open_time.between(start_ms, end_ms),
            t.c.confirmed_at.is_not(None),
        )
        with self._read() as conn:
            return set(conn.execute(q).scalars())

    def missing(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> list[MissingRecord]:
        """Every tracked open time in the inclusive range, suspects and confirmed, oldest first."""
        t = MISSING
        q = (
            select(t)
            .where(
                t.c.symbol == symbol,
                t.c.interval == interval,
                t.c.open_time.between(start_ms, end_ms),
            )
            .order_by(t.c.open_time)
        )
        with self._read() as conn:
            return [
                MissingRecord.model_validate({k: v for k, v in r._mapping.items() if k != "id"})
                for r in conn.execute(q)
            ]

    def clear_missing(self, symbol: str, interval: str, open_times: Iterable[int]) -> int:
        """Forget open times that turned out to exist after all (a later fill succeeded)."""
        times = sorted({int(t) for t in open_times})
        t = MISSING

        def run(conn: Connection) -> int:
            n = 0
            for i in range(0, len(times), 500):
                res = conn.execute(
                    delete(t).where(
                        t.c.symbol == symbol, t.c.interval == interval, t.c.open_time.in_(times[i : i + 500])
                    )
                )
                n += res.rowcount
            return n

        return self._write(run) if times else 0
