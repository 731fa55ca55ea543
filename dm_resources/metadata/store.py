"""The metadata store: audit results, health scores, backfill jobs, catalog, lineage, missing candles.

Why it looks like this:

* **Core, not ORM sessions.** Every method is one short transaction over SQLAlchemy Core
  and returns pydantic records (``schemas.py``): nothing bound to a closed session
  escapes, and the API can serialise the results directly.
* **Upserts are single dialect-native statements** — ``INSERT … ON DUPLICATE KEY UPDATE``
  on MySQL/MariaDB, ``INSERT … ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL — rather
  than select-then-update. Ingest, Dagster and the API write concurrently from separate
  processes; a select-then-insert lets two writers both see "absent" and one then fails
  on the unique key, while the native upsert is atomic in the database, is one round
  trip for a whole batch, and needs no retry loop for that race.
* **Shared SQLite file.** In embedded mode several processes share one SQLite file, so
  every connection turns on WAL (readers never block the writer) and a busy timeout
  (writers queue instead of failing). Write transactions start with ``BEGIN IMMEDIATE``:
  a deferred transaction that reads first and writes later cannot wait on the lock and
  fails at once with "database is locked", which busy_timeout does not cover.
* **Migrations run under a lock** (``GET_LOCK`` on MySQL, ``pg_advisory_lock`` on
  PostgreSQL, the ``BEGIN IMMEDIATE`` write lock on SQLite) so services starting together
  can all call :meth:`MetadataStore.migrate` safely; the losers then find the head
  revision already applied and do nothing.
* **Cheap, no global state.** The constructor only records the URL; the engine is built
  on first use and dropped when the object is pickled, so a store can be created
  anywhere (Dagster resource config, API start-up) without touching the database.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from dm_resources.metadata import models
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

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
MIGRATION_LOCK = "dm_metadata_migrate"
MIGRATION_LOCK_TIMEOUT_S = 120
SQLITE_BUSY_TIMEOUT_MS = 30_000
# MySQL errors worth retrying the whole transaction for: lock wait timeout, deadlock,
# server gone away / lost connection (pool_pre_ping covers idle connections, not mid-query).
MYSQL_TRANSIENT_CODES = frozenset({1205, 1213, 2006, 2013})

DATASETS: Table = models.Dataset.__table__  # type: ignore[assignment]
AUDIT_LOGS: Table = models.AuditLog.__table__  # type: ignore[assignment]
HEALTH: Table = models.HealthMetric.__table__  # type: ignore[assignment]
BACKFILLS: Table = models.BackfillJob.__table__  # type: ignore[assignment]
LINEAGE: Table = models.LineageRecord.__table__  # type: ignore[assignment]
MISSING: Table = models.ConfirmedMissing.__table__  # type: ignore[assignment]

T = TypeVar("T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- engine ------------------------------------------------------------------------------------


def _normalise_url(url: str | URL) -> URL:
    parsed = make_url(url)
    if parsed.get_backend_name() in ("mysql", "mariadb") and "charset" not in parsed.query:
        # pymysql's default charset is utf8 (3-byte); symbols are ASCII but messages need not be.
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def _is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _enable_wal(cur: Any) -> None:
    """Switch the file to WAL (a persistent setting, so usually already on).

    The switch itself needs an exclusive lock and SQLite does not run the busy handler for
    it: two processes opening a new file together can get "database is locked" at once.
    """
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    for attempt in Retrying(
        retry=retry_if_exception(lambda e: "locked" in str(e) or "busy" in str(e)),
        stop=stop_after_delay(SQLITE_BUSY_TIMEOUT_MS / 1000),
        wait=wait_exponential_jitter(multiplier=0.01, max=0.5),
        reraise=True,
    ):
        with attempt:
            cur.execute("PRAGMA journal_mode = WAL").fetchone()


def make_engine(url: str | URL, *, pooled: bool = True) -> Engine:
    """An engine set up for this project's access pattern on each backend (see module docstring)."""
    parsed = _normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if pooled:
            kwargs["pool_recycle"] = 1800  # below MySQL's wait_timeout and typical proxy idle cut-offs
        else:
            kwargs["poolclass"] = NullPool
        return create_engine(parsed, **kwargs)

    memory = _is_sqlite_memory(parsed)
    if not memory:
        Path(parsed.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"connect_args": {"check_same_thread": False}}
    if not pooled and not memory:
        kwargs["poolclass"] = NullPool
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy (the "begin" hook below emits BEGIN).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            if not memory:
                _enable_wal(cur)
                cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe with WAL
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("dm_write") else "BEGIN")

    return engine


def _is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args else None
    if isinstance(code, int) and code in MYSQL_TRANSIENT_CODES:
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database is busy" in message


# --- migrations --------------------------------------------------------------------------------


def alembic_config(url: str | URL | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations, independent of the working directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.attributes["url"] = _normalise_url(url).render_as_string(hide_password=False)
    if connection is not None:
        cfg.attributes["connection"] = connection
    cfg.attributes["configure_logger"] = False
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("no migration revisions found")
    return head


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    """Serialise concurrent migrators across processes (SQLite uses its write lock instead)."""
    backend = conn.dialect.name
    if backend in ("mysql", "mariadb"):
        got = conn.execute(text("SELECT GET_LOCK(:n, :t)"), {"n": MIGRATION_LOCK, "t": MIGRATION_LOCK_TIMEOUT_S})
        conn.commit()
        if got.scalar() != 1:
            raise TimeoutError(f"could not take migration lock {MIGRATION_LOCK!r}")
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": MIGRATION_LOCK})
            conn.commit()
    elif backend == "postgresql":
        conn.execute(text("SELECT pg_advisory_lock(hashtext(:n))"), {"n": MIGRATION_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:n))"), {"n": MIGRATION_LOCK})
            conn.commit()
    else:
        yield


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (the CLI and deploy scripts call this)."""
    store = MetadataStore(url)
    try:
        store.migrate(revision)
    finally:
        store.close()


# --- pure helpers ------------------------------------------------------------------------------


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


class MetadataStore:
    """Plain class over SQLAlchemy, used by the ingest service, Dagster and the API alike."""

    def __init__(self, url: str | URL, *, retry_attempts: int = 4) -> None:
        self.url = _normalise_url(url)
        self.retry_attempts = retry_attempts
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    # engine lifecycle ------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = make_engine(self.url)
        return self._engine

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url.render_as_string(hide_password=False), "retry_attempts": self.retry_attempts}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__init__(state["url"], retry_attempts=state["retry_attempts"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"MetadataStore({self.url.render_as_string(hide_password=True)!r})"

    # plumbing ------------------------------------------------------------------------------

    def _write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one write transaction, retrying the whole of it on deadlocks and lost connections."""
        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        for attempt in retrying:
            with attempt, self.engine.connect() as conn:
                conn.execution_options(dm_write=True)
                with conn.begin():
                    return fn(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def _upsert(
        self,
        conn: Connection,
        table: Table,
        rows: Sequence[Mapping[str, Any]],
        key: Sequence[str],
        update_cols: Sequence[str],
    ) -> None:
        """Insert ``rows``; where ``key`` already exists, overwrite ``update_cols`` with the new values."""
        if not rows:
            return
        name = conn.dialect.name
        if name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            my = mysql_insert(table)
            stmt: Any = my.on_duplicate_key_update({c: my.inserted[c] for c in update_cols})
        elif name in ("sqlite", "postgresql"):
            if name == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            ins = dialect_insert(table)
            if update_cols:
                stmt = ins.on_conflict_do_update(
                    index_elements=list(key), set_={c: ins.excluded[c] for c in update_cols}
                )
            else:
                stmt = ins.on_conflict_do_nothing(index_elements=list(key))
        else:  # pragma: no cover - settings only allow the three backends above
            raise NotImplementedError(f"upsert not implemented for {name}")
        conn.execute(stmt, list(rows))

    # health / migrations -------------------------------------------------------------------

    def ping(self) -> bool:
        """True when the database answers (readiness probes); never raises."""
        try:
            with self._read() as conn:
                conn.execute(text("SELECT 1")).scalar()
            return True
        except Exception as exc:
            log.debug("metadata ping failed: %s", exc)
            return False

    def migrate(self, revision: str = "head") -> None:
        """Apply migrations up to ``revision``; safe to call from several processes at once."""
        with self.engine.connect() as conn, _migration_lock(conn):
            conn.execution_options(dm_write=True)
            with conn.begin():
                command.upgrade(alembic_config(connection=conn), revision)

    def current_revision(self) -> str | None:
        with self._read() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def is_at_head(self) -> bool:
        return self.current_revision() == head_revision()

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
        with self._read() as conn:
            return [AuditLogRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]

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
        with self._read() as conn:
            return [HealthMetricRecord.model_validate(dict(r._mapping)) for r in conn.execute(q)]

    def latest_health_by_symbol(self, interval: str | None = None) -> dict[str, HealthMetricRecord]:
        """Each symbol's row for its latest day; across intervals the most recently computed one wins."""
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
                if prev is None or (rec.computed_at, rec.id) > (prev.computed_at, prev.id):
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
        one, limit = literal_column("1"), literal_column(str(int(confirm_after_attempts)))
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
                    from sqlalchemy.dialects.sqlite import insert as dialect_insert
                else:
                    from sqlalchemy.dialects.postgresql import insert as dialect_insert
                ins = dialect_insert(t_)
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
