"""Shared fixtures: real servers on free ports, never mocks of our own stores or bus.

* ``nats_server`` / ``mongo_server``: a real ``nats-server -js`` and a real SecantusDB,
  one of each per test session, on free ports, data in a temp dir.
* ``mongo_store``: a :class:`MongoStore` on a fresh database per test (indexes created).
* ``metadata_url``: SQLite per test, or MariaDB when ``DM_TEST_MYSQL_URL`` is set
  (CI), each test in a database of its own that is dropped afterwards.
* ``postgres_url``: PostgreSQL from ``DM_TEST_POSTGRES_URL`` or a skip.
* ``meta``: a migrated SQLite metadata store; ``instance``: a persistent Dagster instance.
* ``exchange`` (tests/fake_exchange.py): the one fake, Binance REST over real HTTP on loopback; its
  clock is the wall clock unless a test module overrides the ``exchange_now_ms`` fixture.
* ``resources``: Dagster resources over this test's SecantusDB database, SQLite metadata and exchange.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from dm_resources.candle_store import CandleStore
from dm_resources.embedded import ManagedProcess, free_port, start_nats, start_secantus
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import Settings, load_settings
from tests.fake_exchange import FakeExchange


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = start_nats(port, tmp_path_factory.mktemp("nats"))
    yield f"nats://127.0.0.1:{port}"
    proc.stop()


class MongoServer:
    """A SecantusDB process a test may stop and start again (fault-injection tests)."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.proc: ManagedProcess | None = None
        self.url = f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        self.proc = start_secantus(self.port, self.data_dir)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    server = MongoServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_url(mongo_server: MongoServer) -> str:
    return mongo_server.url


@pytest.fixture
def mongo_store(mongo_server: MongoServer) -> Iterator[MongoStore]:
    db = f"t_{uuid.uuid4().hex[:12]}"
    store = MongoStore(mongo_server.url, db, retry_attempts=2, server_selection_timeout_ms=3000)
    store.ensure_indexes()
    yield store
    try:
        store.client.drop_database(db)
    finally:
        store.close()


def _fresh_mysql_database(base_url: str) -> tuple[str, str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"dm_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base_url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    engine.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False), name


def _drop_mysql_database(base_url: str, name: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(base_url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    engine.dispose()


def metadata_backends() -> list[str]:
    backends = ["sqlite"]
    if os.environ.get("DM_TEST_MYSQL_URL"):
        backends.append("mysql")
    return backends


@pytest.fixture(params=metadata_backends())
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty metadata database: SQLite always, MariaDB too when CI provides it."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metadata.db'}"
        return
    base = os.environ["DM_TEST_MYSQL_URL"]
    url, name = _fresh_mysql_database(base)
    try:
        yield url
    finally:
        _drop_mysql_database(base, name)


@pytest.fixture
def sqlite_metadata_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'metadata.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database (for the Dagster instance) when CI provides the server."""
    base = os.environ.get("DM_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("DM_TEST_POSTGRES_URL not set (CI sets it)")
    import psycopg2  # dagster-postgres depends on it
    from sqlalchemy.engine import make_url

    name = f"dm_test_{uuid.uuid4().hex[:10]}"
    admin = make_url(base)
    conn = psycopg2.connect(
        host=admin.host,
        port=admin.port or 5432,
        user=admin.username,
        password=admin.password or "",
        dbname=admin.database or "postgres",
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def meta(sqlite_metadata_url: str) -> Iterator[MetadataStore]:
    """A migrated SQLite metadata store (the MariaDB path is covered by ``metadata_url`` tests)."""
    store = MetadataStore(sqlite_metadata_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    """A persistent SQLite Dagster instance with an instance ref (schedules and sensors need one)."""
    (tmp_path / "dagster_home").mkdir()
    with DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home")) as inst:
        yield inst


@pytest.fixture
def exchange_now_ms() -> int | None:
    """The fake exchange's "now" (epoch ms); ``None`` is the wall clock. Modules override this fixture."""
    return None


@pytest.fixture
def exchange(exchange_now_ms: int | None) -> Iterator[FakeExchange]:
    ex = (FakeExchange(now_ms=exchange_now_ms) if exchange_now_ms is not None else FakeExchange()).start()
    yield ex
    ex.stop()


@pytest.fixture
def resources(mongo_store: MongoStore, sqlite_metadata_url: str, exchange: FakeExchange) -> ResourceSet:
    return ResourceSet(
        load_settings(
            mongo_url=mongo_store.url,
            mongo_db=mongo_store.db_name,
            metadata_url=sqlite_metadata_url,
            binance_rest_url=exchange.url,
        )
    )


# --- Redis: the machine's server for L2 cache tests, and one a test may kill ---------------------------

REDIS_URL = os.environ.get("DM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """The machine's Redis (CI runs one on 6379); tests keep apart by key prefix (each has its own Mongo db)."""
    return REDIS_URL


class RedisServer:
    """A ``redis-server`` of this test's own on a free port, nothing kept on disk, to stop and start again."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: ManagedProcess | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = ManagedProcess("redis", args, self.log_dir / "redis.log").start()
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {self.proc.tail()}") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


# --- an API over a few hourly BTCUSDT candles (cache and strategy tests) ---------------------------------

HOUR = 3_600_000


def hour_candles(start: int, n: int) -> list[dict[str, Any]]:
    return [
        {
            "symbol": "BTCUSDT",
            "interval": "1h",
            "open_time": start + i * HOUR,
            "close_time": start + (i + 1) * HOUR - 1,
            "open": 100.0 + i,
            "high": 102.0 + i,
            "low": 99.0 + i,
            "close": 101.0 + i,
            "volume": 5.0,
            "quote_volume": 500.0,
            "taker_buy_volume": 2.0,
            "taker_buy_quote_volume": 200.0,
            "trades": 9,
            "source": "kline",
        }
        for i in range(n)
    ]


def put_hour_candles(store: MongoStore, docs: list[dict[str, Any]]) -> None:
    CandleStore(store).sync_range("BTCUSDT", "1h", docs[0]["open_time"], docs[-1]["open_time"] + 1, docs)


@pytest.fixture
def start_ms() -> int:
    now = int(time.time() * 1000)
    return now - now % HOUR - 48 * HOUR


@pytest.fixture
def settings_for(mongo_store: MongoStore, mongo_url: str, tmp_path: Path, start_ms: int) -> Iterator[Any]:
    put_hour_candles(mongo_store, hour_candles(start_ms, 10))
    meta = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}")
    meta.migrate()

    def build(redis_url: str | None) -> Settings:
        return load_settings(
            mongo_url=mongo_url,
            mongo_db=mongo_store.db.name,
            metadata_url=str(meta.url),
            symbols=["BTCUSDT"],
            redis_url=redis_url,
            dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
        )

    yield build
    meta.close()


@pytest.fixture(autouse=True, scope="session")
def no_public_archive() -> Iterator[None]:
    """Tests never reach Binance's public data host: the archive is off unless a test serves its mirror
    (``archive_mirror``), and every ``dagster dev`` a test starts inherits that."""
    from dm_resources.settings import get_settings

    before = os.environ.get("DM_BINANCE_ARCHIVE_URL")
    os.environ["DM_BINANCE_ARCHIVE_URL"] = ""
    get_settings.cache_clear()
    yield
    if before is None:
        os.environ.pop("DM_BINANCE_ARCHIVE_URL", None)
    else:
        os.environ["DM_BINANCE_ARCHIVE_URL"] = before
    get_settings.cache_clear()
