"""SQLAlchemy plumbing of the metadata store: engines, SQLite sharing, retries, migrations.

Why it looks like this:

* **Shared SQLite file.** In embedded mode several processes share one SQLite file, so
  every connection turns on WAL (readers never block the writer) and a busy timeout
  (writers queue instead of failing). Write transactions start with ``BEGIN IMMEDIATE``:
  a deferred transaction that reads first and writes later cannot wait on the lock and
  fails at once with "database is locked", which busy_timeout does not cover.
* **Migrations run under a lock** (``GET_LOCK`` on MySQL, ``pg_advisory_lock`` on
  PostgreSQL, the ``BEGIN IMMEDIATE`` write lock on SQLite) so services starting together
  can all call :meth:`SqlStore.migrate` safely; the losers then find the head
  revision already applied and do nothing.
* **Upserts are single dialect-native statements** — ``INSERT … ON DUPLICATE KEY UPDATE``
  on MySQL/MariaDB, ``INSERT … ON CONFLICT DO UPDATE`` on SQLite and PostgreSQL — rather
  than select-then-update: atomic under concurrent writers, one round trip per batch.
* **Cheap, no global state.** The constructor only records the URL; the engine is built
  on first use and dropped when the object is pickled, so a store can be created
  anywhere (Dagster resource config, API start-up) without touching the database.

The per-table methods live in ``store.py`` (and beside it for other tables), on top of
:class:`SqlStore`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import NullPool
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

if TYPE_CHECKING:  # Alembic (and Mako, Pygments under it) is imported when migrating, not by every run worker
    from alembic.config import Config

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
MIGRATION_LOCK = "dm_metadata_migrate"
MIGRATION_LOCK_TIMEOUT_S = 120
SQLITE_BUSY_TIMEOUT_MS = 30_000
# MySQL errors worth retrying the whole transaction for: lock wait timeout, deadlock,
# server gone away / lost connection (pool_pre_ping covers idle connections, not mid-query).
MYSQL_TRANSIENT_CODES = frozenset({1205, 1213, 2006, 2013})


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
    from alembic.config import Config

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
    from alembic.script import ScriptDirectory

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
    store = SqlStore(url)
    try:
        store.migrate(revision)
    finally:
        store.close()


# --- pure helpers ------------------------------------------------------------------------------


class SqlStore:
    """A lazily built engine plus one-transaction reads/writes with retries; subclasses add tables."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url.render_as_string(hide_password=False), "retry_attempts": self.retry_attempts}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__init__(state["url"], retry_attempts=state["retry_attempts"])  # type: ignore[misc]  # rebuild from the pickled URL

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.render_as_string(hide_password=True)!r})"

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

    def _write_until_no_conflict(self, fn: Callable[[Connection], T], attempts: int) -> T:
        """:meth:`_write`, run again (up to ``attempts`` times) when it lost a race on a unique key.

        A writer that read "no row yet" and then collides with a concurrent insert of the same
        key sees the winner's row on its next attempt, so racing writers end with one row each
        instead of an error; after ``attempts`` the ``IntegrityError`` is raised.
        """
        retrying = Retrying(
            retry=retry_if_exception_type(IntegrityError), stop=stop_after_attempt(attempts), reraise=True
        )
        return retrying(self._write, fn)

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
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                ins: Any = sqlite_insert(table)
            else:
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                ins = pg_insert(table)
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
                from alembic import command

                command.upgrade(alembic_config(connection=conn), revision)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self._read() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def is_at_head(self) -> bool:
        return self.current_revision() == head_revision()
