"""MetadataStore and its migrations against real databases (SQLite always, MariaDB when CI gives one)."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import Column, Integer, MetaData, inspect, text
from sqlalchemy.exc import StatementError

from dm_resources.metadata import (
    ACTIVE_BACKFILL_STATUSES,
    AuditLogIn,
    DatasetIn,
    HealthMetricIn,
    LineageEdge,
    MetadataStore,
    SchemaField,
    dataset_id,
    head_revision,
    upgrade,
    walk_lineage,
)
from dm_resources.metadata.__main__ import main as cli_main
from dm_resources.metadata.models import Base

TABLES = {
    "datasets",
    "audit_logs",
    "health_metrics",
    "backfill_jobs",
    "lineage_records",
    "confirmed_missing",
    "mutation_audit",
    "idempotency_keys",
    "positions",
    "daily_pnl",
    # the platform services' records (service_models.py)
    "api_write_audit",
    "strategy_configs",
    "strategy_config_versions",
    "strategy_parameters",
    "strategy_lifecycle_events",
    "ledger_adjustments",
    "ledger_exchange_days",
    "ledger_exchange_positions",
    # the archive files history came from (or that were refused)
    "archive_files",
}
UTC = dt.UTC
TOKYO = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture
def store(metadata_url: str) -> Iterator[MetadataStore]:
    s = MetadataStore(metadata_url)
    s.migrate()
    yield s
    s.close()


def _health(symbol: str, day: dt.date, score: float, interval: str = "1m", **kw: object) -> HealthMetricIn:
    return HealthMetricIn(
        symbol=symbol,
        interval=interval,
        day=day,
        completeness=score,
        freshness=score,
        consistency=score,
        score=score,
        **kw,
    )  # type: ignore[arg-type]


# --- migrations ---------------------------------------------------------------------------------


def test_migrations_build_empty_database_and_rerun_is_noop(metadata_url: str) -> None:
    s = MetadataStore(metadata_url)
    try:
        assert s.current_revision() is None
        s.migrate()
        names = set(inspect(s.engine).get_table_names())
        assert names == TABLES | {"alembic_version"}
        assert s.current_revision() == head_revision()
        assert s.is_at_head()
        with s.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM datasets")).scalar() == 0

        s.record_audit([AuditLogIn(check_name="gaps", passed=True)])
        s.migrate()  # second run: nothing to do, data untouched
        assert set(inspect(s.engine).get_table_names()) == names
        assert s.current_revision() == head_revision()
        assert [r.check_name for r in s.audit_logs()] == ["gaps"]
        with s.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM alembic_version")).scalar() == 1
    finally:
        s.close()


def test_models_and_migrations_agree(store: MetadataStore) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []

        # Control: the comparison does see a difference when there is one.
        drifted = MetaData(naming_convention=Base.metadata.naming_convention)
        for table in Base.metadata.tables.values():
            table.to_metadata(drifted)
        drifted.tables["datasets"].append_column(Column("extra", Integer))
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), drifted)
        assert [d[0] for d in diffs] == ["add_column"]


def test_concurrent_migrate_from_two_processes_worth_of_stores(metadata_url: str) -> None:
    stores = [MetadataStore(metadata_url) for _ in range(2)]
    errors: list[BaseException] = []

    def run(s: MetadataStore) -> None:
        try:
            s.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert all(s.current_revision() == head_revision() for s in stores)
    finally:
        for s in stores:
            s.close()


def test_cli_upgrade_and_check(metadata_url: str) -> None:
    assert cli_main(["check", "--url", metadata_url]) == 1  # empty database is behind head
    assert cli_main(["upgrade", "--url", metadata_url]) == 0
    assert cli_main(["check", "--url", metadata_url]) == 0


def test_upgrade_function(metadata_url: str) -> None:
    upgrade(metadata_url)
    s = MetadataStore(metadata_url)
    try:
        assert s.is_at_head()
    finally:
        s.close()


def test_cli_reads_dm_metadata_url(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "cli.db"
    env = {**os.environ, "DM_METADATA_URL": f"sqlite:///{db}"}
    proc = subprocess.run(
        [sys.executable, "-m", "dm_resources.metadata", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    s = MetadataStore(f"sqlite:///{db}")
    try:
        assert s.current_revision() == head_revision()
    finally:
        s.close()


# --- engine -------------------------------------------------------------------------------------


def test_ping_and_pickle(store: MetadataStore) -> None:
    assert store.ping()
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url
    assert clone.ping()
    clone.close()
    assert not MetadataStore("mysql+pymysql://nobody@127.0.0.1:1/none").ping()


def test_sqlite_uses_wal_and_busy_timeout(sqlite_metadata_url: str) -> None:
    s = MetadataStore(sqlite_metadata_url)
    try:
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        s.close()


# --- audit logs ---------------------------------------------------------------------------------


def test_audit_round_trip_json_and_utc(store: MetadataStore) -> None:
    t0 = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    details = {"gaps": [[1767225600000, 1767225660000]], "note": "Größe ✓", "ratio": 0.25, "ok": None}
    rows = [
        AuditLogIn(
            check_name="gaps",
            severity="WARN",
            passed=False,
            symbol="BTCUSDT",
            interval="1m",
            asset_key="candles_1m",
            partition_key="2026-01-02|BTCUSDT",
            message="2 gaps",
            details=details,
            run_id="run-1",
            created_at=t0,
        ),
        AuditLogIn(check_name="ohlc", passed=True, symbol="BTCUSDT", created_at=t0 + dt.timedelta(minutes=1)),
        # Same instant written from another zone: stored and returned as UTC.
        AuditLogIn(
            check_name="gaps",
            passed=True,
            symbol="ETHUSDT",
            created_at=(t0 + dt.timedelta(minutes=2)).astimezone(TOKYO),
        ),
    ]
    assert store.record_audit(rows) == 3
    assert store.record_audit([]) == 0

    btc = store.audit_logs(symbol="BTCUSDT")
    assert [r.check_name for r in btc] == ["ohlc", "gaps"]  # newest first
    first = btc[1]
    assert first.created_at == t0 and first.created_at.tzinfo == UTC
    assert first.details == details
    assert (first.severity, first.passed, first.partition_key, first.run_id) == (
        "WARN",
        False,
        "2026-01-02|BTCUSDT",
        "run-1",
    )

    eth = store.audit_logs(symbol="ETHUSDT")[0]
    assert eth.created_at == t0 + dt.timedelta(minutes=2)
    assert eth.created_at.utcoffset() == dt.timedelta(0)

    assert [r.symbol for r in store.audit_logs(since=t0 + dt.timedelta(seconds=30))] == ["ETHUSDT", "BTCUSDT"]
    assert len(store.audit_logs(limit=2)) == 2
    assert [r.check_name for r in store.audit_logs(passed=False)] == ["gaps"]
    assert [r.symbol for r in store.audit_logs(check_name="gaps")] == ["ETHUSDT", "BTCUSDT"]


def test_audit_defaults_and_refuses_bad_input(store: MetadataStore) -> None:
    before = dt.datetime.now(UTC)
    store.record_audit([AuditLogIn(check_name="freshness", passed=True)])
    (row,) = store.audit_logs()
    assert row.severity == "INFO" and row.created_at >= before.replace(microsecond=0)
    with pytest.raises(ValidationError):
        AuditLogIn(check_name="x", passed=True, severity="FATAL")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        AuditLogIn(check_name="x", passed=True, created_at=dt.datetime(2026, 1, 1))  # naive
    with pytest.raises(StatementError, match="naive datetime"):
        store.audit_logs(since=dt.datetime(2026, 1, 1))


# --- health -------------------------------------------------------------------------------------


def test_health_upsert_updates_in_place(store: MetadataStore) -> None:
    d1, d2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    store.upsert_health(
        [_health("BTCUSDT", d1, 80.0, details={"gaps": 3}), _health("BTCUSDT", d2, 90.0), _health("ETHUSDT", d1, 70.0)]
    )
    before = {(r.symbol, r.day): r for r in store.health()}
    assert len(before) == 3

    store.upsert_health([_health("BTCUSDT", d1, 99.5, details={"gaps": 0}, run_id="rerun")])
    after = store.health(symbol="BTCUSDT", interval="1m")
    assert [(r.day, r.score) for r in after] == [(d1, 99.5), (d2, 90.0)]
    assert len(store.health()) == 3
    rerun = after[0]
    assert rerun.id == before[("BTCUSDT", d1)].id
    assert rerun.details == {"gaps": 0} and rerun.run_id == "rerun"
    assert rerun.computed_at.tzinfo == UTC

    assert [r.day for r in store.health(day_from=d2)] == [d2]
    assert [r.symbol for r in store.health(day_to=d1)] == ["BTCUSDT", "ETHUSDT"]
    with pytest.raises(ValidationError):
        _health("BTCUSDT", d1, 101.0)


def test_latest_health_by_symbol(store: MetadataStore) -> None:
    d1, d2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    t = dt.datetime(2026, 1, 3, tzinfo=UTC)
    store.upsert_health(
        [
            _health("BTCUSDT", d1, 50.0, computed_at=t),
            _health("BTCUSDT", d2, 60.0, computed_at=t),
            _health("BTCUSDT", d2, 65.0, interval="5m", computed_at=t + dt.timedelta(seconds=1)),
            _health("ETHUSDT", d1, 70.0, computed_at=t),
        ]
    )
    latest = store.latest_health_by_symbol()
    # The worst interval of the latest day speaks for the pair, not the most recent row.
    assert {s: (r.day, r.interval, r.score) for s, r in latest.items()} == {
        "BTCUSDT": (d2, "1m", 60.0),
        "ETHUSDT": (d1, "1m", 70.0),
    }
    only_1m = store.latest_health_by_symbol(interval="1m")
    assert only_1m["BTCUSDT"].score == 60.0
    assert store.latest_health_by_symbol(interval="1h") == {}


# --- backfill jobs ------------------------------------------------------------------------------


def test_backfill_job_lifecycle(store: MetadataStore) -> None:
    start, end = 1767225600000, 1767311999999
    job_id = store.create_backfill_job(
        origin="api",
        symbols=["BTCUSDT", "ETHUSDT"],
        interval="1m",
        start_time=start,
        end_time=end,
        partition_keys=["2026-01-01|BTCUSDT", "2026-01-01|ETHUSDT"],
        requested_by="ops",
    )
    job = store.get_backfill_job(job_id)
    assert job is not None
    assert (job.status, job.origin, job.symbols, job.start_time, job.end_time) == (
        "queued",
        "api",
        ["BTCUSDT", "ETHUSDT"],
        start,
        end,
    )
    assert job.partition_keys == ["2026-01-01|BTCUSDT", "2026-01-01|ETHUSDT"]
    assert job.created_at.tzinfo == UTC and job.dagster_run_ids is None

    running = store.update_backfill_job(
        job_id, status="running", dagster_backfill_id="bf_abc", dagster_run_ids=["r1", "r2"]
    )
    assert (running.status, running.dagster_backfill_id, running.dagster_run_ids) == ("running", "bf_abc", ["r1", "r2"])
    assert running.updated_at >= job.updated_at and running.created_at == job.created_at

    run_job = f"run:{uuid.uuid4()}"  # 40 chars: a run requested by a sensor
    other = store.create_backfill_job(origin="sensor", symbols=["SOLUSDT"], job_id=run_job)
    assert other == run_job
    done = store.update_backfill_job(other, status="failure", error="binance 418")
    assert done.error == "binance 418"

    assert [j.id for j in store.list_backfill_jobs(status="running")] == [job_id]
    assert {j.id for j in store.list_backfill_jobs(status=ACTIVE_BACKFILL_STATUSES)} == {job_id}
    assert {j.id for j in store.list_backfill_jobs()} == {job_id, other}
    assert len(store.list_backfill_jobs(limit=1)) == 1
    assert store.get_backfill_job("nope") is None

    with pytest.raises(KeyError):
        store.update_backfill_job("nope", status="running")
    with pytest.raises(ValidationError):
        store.update_backfill_job(job_id, status="exploded")
    with pytest.raises(ValidationError):
        store.update_backfill_job(job_id, colour="red")
    with pytest.raises(ValidationError):
        store.update_backfill_job(job_id, status=None)
    with pytest.raises(ValidationError):
        store.create_backfill_job(origin="cron", symbols=["BTCUSDT"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        store.create_backfill_job(origin="api", symbols=["BTCUSDT"], job_id="x" * 65)


# --- datasets -----------------------------------------------------------------------------------


def test_dataset_upsert_get_list_and_partial_update(store: MetadataStore) -> None:
    schema = [
        SchemaField(name="open_time", type="int64", description="epoch ms UTC"),
        SchemaField(name="close", type="float64"),
    ]
    ds_id = store.upsert_dataset(
        DatasetIn(
            kind="candles",
            symbol="BTCUSDT",
            interval="1m",
            collection="candles",
            description="1m candles",
            schema=schema,
            row_count=1440,
            first_time=1767225600000,
            last_time=1767311940000,
            freshness_seconds=12.345678901234,
        )
    )
    assert ds_id == dataset_id("candles", "BTCUSDT", "1m") == "candles:BTCUSDT:1m"
    store.upsert_datasets(
        [
            DatasetIn(kind="agg_trades", symbol="BTCUSDT", collection="agg_trades"),
            DatasetIn(kind="candles", symbol="ETHUSDT", interval="1m", collection="candles"),
        ]
    )

    got = store.get_dataset(ds_id)
    assert got is not None
    assert got.schema_ == schema and got.row_count == 1440 and got.health_score is None
    assert got.freshness_seconds == 12.345678901234  # DOUBLE, not MySQL's 4-byte FLOAT
    assert (got.first_time, got.last_time) == (1767225600000, 1767311940000)
    assert got.updated_at.tzinfo == UTC
    dumped = got.model_dump()["schema"][0]
    assert dumped == {"name": "open_time", "type": "int64", "description": "epoch ms UTC"}

    # The health job sets only the score: counts and schema written by the catalog stay.
    store.upsert_dataset(
        DatasetIn(kind="candles", symbol="BTCUSDT", interval="1m", collection="candles", health_score=97.3)
    )
    again = store.get_dataset(ds_id)
    assert again is not None
    assert (again.health_score, again.row_count, again.schema_, again.description) == (97.3, 1440, schema, "1m candles")
    assert again.updated_at >= got.updated_at

    assert [d.id for d in store.list_datasets()] == ["agg_trades:BTCUSDT", "candles:BTCUSDT:1m", "candles:ETHUSDT:1m"]
    assert [d.id for d in store.list_datasets(kind="candles")] == ["candles:BTCUSDT:1m", "candles:ETHUSDT:1m"]
    assert [d.id for d in store.list_datasets(symbol="BTCUSDT")] == ["agg_trades:BTCUSDT", "candles:BTCUSDT:1m"]
    assert store.get_dataset("candles:XRPUSDT:1m") is None


# --- lineage ------------------------------------------------------------------------------------

GRAPH = [
    LineageEdge(
        upstream="klines", downstream="candles_1m", transformation="closed klines → 1m candles", asset_group="candles"
    ),
    LineageEdge(
        upstream="agg_trades", downstream="candles_1m", transformation="trades → 1m bars", asset_group="candles"
    ),
    LineageEdge(upstream="candles_1m", downstream="candles_5m", transformation="resample", asset_group="candles"),
    LineageEdge(upstream="candles_5m", downstream="volatility", transformation="rolling std", asset_group="analytics"),
]


def test_replace_lineage_is_idempotent_and_removes_stale_edges(store: MetadataStore) -> None:
    assert store.replace_lineage(GRAPH) == 4
    first = {(e.upstream, e.downstream): e for e in store.lineage()}
    assert store.replace_lineage(GRAPH) == 4
    second = {(e.upstream, e.downstream): e for e in store.lineage()}
    assert second == first
    assert all(e.recorded_at is not None and e.recorded_at.tzinfo == UTC for e in second.values())

    renamed = LineageEdge(
        upstream="candles_1m", downstream="candles_5m", transformation="ohlcv resample", asset_group="candles"
    )
    changed = [*GRAPH[:3], renamed]
    assert store.replace_lineage(changed) == 3  # the duplicate edge collapses; volatility edge removed
    third = {(e.upstream, e.downstream): e for e in store.lineage()}
    assert set(third) == {("klines", "candles_1m"), ("agg_trades", "candles_1m"), ("candles_1m", "candles_5m")}
    kept = third[("candles_1m", "candles_5m")]
    assert kept.transformation == "ohlcv resample"
    assert kept.recorded_at == first[("candles_1m", "candles_5m")].recorded_at


def test_lineage_for_node(store: MetadataStore) -> None:
    store.replace_lineage(GRAPH)
    view = store.lineage_for("candles_1m")
    assert view.node == "candles_1m"
    assert sorted(e.upstream for e in view.upstream) == ["agg_trades", "klines"]
    assert [e.downstream for e in view.downstream] == ["candles_5m"]

    deep = store.lineage_for("candles_1m", depth=None)
    assert [e.downstream for e in deep.downstream] == ["candles_5m", "volatility"]
    leaf = store.lineage_for("volatility", depth=2)
    assert [e.upstream for e in leaf.upstream] == ["candles_5m", "candles_1m"] and leaf.downstream == []
    assert store.lineage_for("unknown").upstream == []


def test_walk_lineage_survives_cycles() -> None:
    edges = [LineageEdge(upstream="a", downstream="b"), LineageEdge(upstream="b", downstream="a")]
    view = walk_lineage(edges, "a", depth=None)
    assert [(e.upstream, e.downstream) for e in view.downstream] == [("a", "b"), ("b", "a")]


# --- confirmed missing --------------------------------------------------------------------------


def test_mark_missing_confirms_after_n_attempts(store: MetadataStore) -> None:
    base = 1767225600000
    gap = [base + i * 60_000 for i in range(3)]
    assert store.mark_missing("BTCUSDT", "1m", gap, "empty REST page", confirm_after_attempts=3) == set()
    assert store.mark_missing("BTCUSDT", "1m", gap[:2], "empty REST page", confirm_after_attempts=3) == set()
    assert store.confirmed_missing("BTCUSDT", "1m", base, base + 10 * 60_000) == set()
    newly = store.mark_missing("BTCUSDT", "1m", [*gap[:2], gap[0]], "still empty", confirm_after_attempts=3)
    assert newly == set(gap[:2])

    tracked = {r.open_time: r for r in store.missing("BTCUSDT", "1m", base, base + 10 * 60_000)}
    assert {t: r.attempts for t, r in tracked.items()} == {gap[0]: 3, gap[1]: 3, gap[2]: 1}
    assert tracked[gap[2]].confirmed_at is None
    confirmed_at = tracked[gap[0]].confirmed_at
    assert confirmed_at is not None and confirmed_at.tzinfo == UTC
    assert tracked[gap[0]].reason == "still empty"

    # A further attempt keeps the original confirmation time.
    store.mark_missing("BTCUSDT", "1m", [gap[0]], "again", confirm_after_attempts=3)
    again = store.missing("BTCUSDT", "1m", gap[0], gap[0])[0]
    assert again.attempts == 4 and again.confirmed_at == confirmed_at

    # Inclusive bounds, and other symbols/intervals are separate.
    assert store.confirmed_missing("BTCUSDT", "1m", gap[1], gap[1]) == {gap[1]}
    assert store.confirmed_missing("BTCUSDT", "5m", base, base + 10 * 60_000) == set()
    outage = store.mark_missing("ETHUSDT", "1m", [gap[0]], "exchange outage", confirm_after_attempts=1)
    assert outage == {gap[0]}
    assert store.confirmed_missing("ETHUSDT", "1m", base, base) == {gap[0]}
    assert store.confirmed_missing("BTCUSDT", "1m", base, base + 10 * 60_000) == set(gap[:2])

    assert store.clear_missing("BTCUSDT", "1m", [gap[1], gap[2]]) == 2
    assert store.confirmed_missing("BTCUSDT", "1m", base, base + 10 * 60_000) == {gap[0]}
    assert store.mark_missing("BTCUSDT", "1m", [], "nothing") == set()
    with pytest.raises(ValueError):
        store.mark_missing("BTCUSDT", "1m", gap, "x", confirm_after_attempts=0)
