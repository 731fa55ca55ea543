"""Dagster definitions: load, asset-spec snapshot, materialization with checks, sensors, schedule."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    MultiPartitionKey,
    build_schedule_context,
    build_sensor_context,
    materialize,
)

from dm_assets.candles.assets import CANDLE_ASSETS
from dm_assets.candles.schedules import audit_schedule
from dm_assets.candles.sensors import gap_sensor, symbol_discovery_sensor
from dm_assets.definitions import build_defs
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_assets.quality.assets import QUALITY_ASSETS
from dm_assets.raw.sensors import observe_raw
from dm_resources.binance import Kline
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from tests.dagster_helpers import materializations
from tests.fake_exchange import FakeExchange

ROOT = Path(__file__).resolve().parent.parent
DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)


def test_definitions_load(resources: ResourceSet) -> None:
    defs = build_defs(resources)
    Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "raw/klines",
        "candles/candles_1m",
        "candles/candles_1d",
        "quality/audit_results",
        "quality/health_scores",
    } <= keys


def _spec_snapshot(defs: Definitions) -> dict[str, dict]:
    graph = defs.resolve_asset_graph()
    snap = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        snap[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitioned": node.partitions_def is not None,
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "checks": sorted(c.name for c in node.check_keys),
            "has_description": bool(node.description),
            # Shared policy (dm_assets/policy.py): every asset of a domain carries its layer tag.
            "tags": {k: v for k, v in sorted(node.tags.items()) if not k.startswith("dagster/kind/")},
        }
    return snap


def test_asset_spec_snapshot(resources: ResourceSet) -> None:
    """Every asset's group, kinds, partitioning, upstreams and checks: a change here is a lineage change."""
    snap = _spec_snapshot(build_defs(resources))
    expected_path = ROOT / "tests" / "snapshots" / "asset_specs.json"
    if os.environ.get("DM_UPDATE_SNAPSHOTS"):
        expected_path.parent.mkdir(exist_ok=True)
        expected_path.write_text(json.dumps(snap, indent=2, sort_keys=True) + "\n")
    assert snap == json.loads(expected_path.read_text())
    assert all(v["has_description"] for v in snap.values())


def _seed_partition(store: MongoStore, ex: FakeExchange, symbol: str, skip: set[int]) -> None:
    rows = ex.klines(symbol, "1m", START, END)
    store.insert_idempotent(
        "klines",
        [Kline.from_row(r).to_document(symbol, "1m", source="ws") for i, r in enumerate(rows) if i not in skip],
    )


def test_materialize_partition_with_checks(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore, exchange: FakeExchange
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT"])
    _seed_partition(mongo_store, exchange, "BTCUSDT", skip=set(range(10, 30)))
    pk = partition_key(DAY, "BTCUSDT")
    result = materialize(
        [*CANDLE_ASSETS, *QUALITY_ASSETS], instance=instance, partition_key=pk, resources=resources.as_dict()
    )
    assert result.success
    mat = materializations(result, "candles/candles_1m")[0]
    assert mat.metadata["rows"].value == 1440
    assert json.loads(json.dumps(mat.metadata["by_source"].value)) == {"kline": 1420, "rest": 20}
    checks = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == AssetKey(["candles", "candles_1m"])
    }
    assert set(checks) == {
        "no_gaps",
        "no_duplicates",
        "ohlc_sane",
        "no_bad_prints",
        "sources_agree",
        "archive_files_accepted",
    }
    assert all(c.passed for c in checks.values())

    meta = MetadataStore(resources.settings.metadata_url)
    logs = meta.audit_logs(symbol="BTCUSDT", limit=1000)
    # Every outcome once (the candle step's; audit_results reused them): sources_agree and archive on 1m only.
    assert len(logs) == 6 + 5 * 4 and all(r.passed for r in logs)
    health = meta.health(symbol="BTCUSDT")
    assert {h.interval for h in health} == {"1m", "5m", "15m", "1h", "4h", "1d"}
    assert all(h.score == 100.0 for h in health)

    # Second materialization changes nothing in the candles.
    again = materialize(CANDLE_ASSETS[:1], instance=instance, partition_key=pk, resources=resources.as_dict())
    mat2 = materializations(again, "candles/candles_1m")[0]
    assert (mat2.metadata["upserted"].value, mat2.metadata["modified"].value) == (0, 0)


def test_checks_fail_on_injected_bad_candles(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore, exchange: FakeExchange
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["ETHUSDT"])
    rows = exchange.klines("ETHUSDT", "1m", START, END)
    docs = [Kline.from_row(r).to_document("ETHUSDT", "1m", source="ws") for r in rows]
    from bson.decimal128 import Decimal128

    bad = docs[500]
    bad["high"], bad["low"] = Decimal128("1.00"), Decimal128("99999.00")  # high < low: impossible candle
    docs[900]["close"] = Decimal128(str(float(docs[900]["close"].to_decimal()) * 3))  # a 200% jump
    mongo_store.insert_idempotent("klines", docs)
    result = materialize(
        CANDLE_ASSETS[:1],
        instance=instance,
        partition_key=partition_key(DAY, "ETHUSDT"),
        resources=resources.as_dict(),
        raise_on_error=False,
    )
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["ohlc_sane"].passed
    assert checks["ohlc_sane"].metadata["count"].value >= 1
    assert START + 500 * 60_000 in checks["ohlc_sane"].metadata["samples"].value
    assert checks["no_bad_prints"].metadata["count"].value >= 1
    assert START + 900 * 60_000 in checks["no_bad_prints"].metadata["samples"].value
    assert checks["no_gaps"].passed and checks["no_duplicates"].passed


def test_symbol_discovery_sensor_adds_new_symbols(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore
) -> None:
    mongo_store.insert_idempotent(
        "agg_trades", [{"_id": "DOGEUSDT:1", "symbol": "DOGEUSDT", "agg_id": 1, "trade_time": START}]
    )
    with build_sensor_context(instance=instance, resources={"mongo": resources.mongo}) as ctx:
        result = symbol_discovery_sensor(ctx)
    added = result.dynamic_partitions_requests[0]
    assert sorted(added.partition_keys) == ["BTCUSDT", "DOGEUSDT", "ETHUSDT", "SOLUSDT"]
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(added.partition_keys))
    with build_sensor_context(instance=instance, resources={"mongo": resources.mongo}) as ctx:
        again = symbol_discovery_sensor(ctx)
    assert "none new" in again.skip_message  # type: ignore[union-attr]


def test_gap_sensor_requests_exactly_gapped_partitions_and_advances_cursor(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore, exchange: FakeExchange
) -> None:
    from dm_assets.candles import build

    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT", "ETHUSDT"])
    yesterday = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    meta = MetadataStore(resources.settings.metadata_url)
    meta.migrate()
    client = resources.binance.get_client()
    # BTCUSDT yesterday is complete (1m and derived); everything else has holes.
    build.build_1m_day(mongo_store, meta, client, "BTCUSDT", yesterday)
    build.build_higher_day(mongo_store, meta, "BTCUSDT", yesterday, "1d")

    res = {"mongo": resources.mongo, "metadata": resources.metadata}
    with build_sensor_context(instance=instance, resources=res) as ctx:
        result = gap_sensor(ctx)
    keys = [r.partition_key for r in result.run_requests]
    assert partition_key(yesterday, "BTCUSDT") not in keys
    assert partition_key(yesterday, "ETHUSDT") in keys
    assert len(keys) == len(set(keys))
    assert all(r.tags["dm/origin"] == "sensor" for r in result.run_requests)
    cursor = json.loads(result.cursor)
    assert cursor["scanned"] == len(keys) + 1 and cursor["offset"] == 0  # whole list scanned, wrapped

    # The same holes on the next tick produce the same run keys (Dagster de-duplicates them).
    with build_sensor_context(instance=instance, resources=res, cursor=result.cursor) as ctx:
        second = gap_sensor(ctx)
    assert {r.run_key for r in second.run_requests} == {r.run_key for r in result.run_requests}


def test_gap_sensor_resumes_from_cursor_when_over_budget(
    instance: DagsterInstance, resources: ResourceSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dm_assets.candles import sensors

    monkeypatch.setattr(sensors, "MAX_PARTITIONS_PER_TICK", 2)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["AUSDT", "BUSDT"])
    res = {"mongo": resources.mongo, "metadata": resources.metadata}
    with build_sensor_context(instance=instance, resources=res) as ctx:
        first = gap_sensor(ctx)
    assert json.loads(first.cursor)["offset"] == 2 and len(first.run_requests) == 2
    with build_sensor_context(instance=instance, resources=res, cursor=first.cursor) as ctx:
        second = gap_sensor(ctx)
    assert json.loads(second.cursor)["offset"] == 4
    assert not {r.partition_key for r in first.run_requests} & {r.partition_key for r in second.run_requests}


def test_audit_schedule_targets_today_for_every_symbol(instance: DagsterInstance) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT", "ETHUSDT"])
    when = dt.datetime(2026, 11, 23, 10, 5, tzinfo=dt.UTC)
    ctx = build_schedule_context(instance=instance, scheduled_execution_time=when)
    requests = list(audit_schedule(ctx))
    assert [str(r.partition_key) for r in requests] == ["2026-11-23|BTCUSDT", "2026-11-23|ETHUSDT"]
    assert all(r.tags["dm/origin"] == "schedule" for r in requests)
    assert isinstance(requests[0].partition_key, MultiPartitionKey)


def test_raw_observations(mongo_store: MongoStore) -> None:
    mongo_store.insert_idempotent(
        "agg_trades",
        [{"_id": f"BTCUSDT:{i}", "symbol": "BTCUSDT", "agg_id": i, "trade_time": START + i} for i in range(5)],
    )
    obs = {o.asset_key.to_user_string(): o for o in observe_raw(mongo_store, now_ms=START + 10_004)}
    trades = obs["raw/agg_trades"].metadata
    assert trades["documents"].value == 5 and trades["latest_event_time_ms"].value == START + 4
    assert trades["lag_seconds"].value == 10.0
    assert obs["raw/klines"].metadata["documents"].value == 0


def test_partitions_are_date_by_symbol() -> None:
    dims = {d.name for d in DATE_SYMBOL_PARTITIONS.partitions_defs}
    assert dims == {"date", "symbol"}


def test_definitions_validate_with_postgres_instance(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster definitions validate` with the repository's dagster.yaml (dagster-postgres from env)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": postgres_url}
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bin_dir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The instance really is PostgreSQL-backed and usable.
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url)
    with DagsterInstance.from_config(str(home)) as inst:
        assert type(inst.run_storage).__name__ == "PostgresRunStorage"
        inst.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT"])
        assert inst.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["BTCUSDT"]


def _connections_for_lookups(instance_yaml: str, home: Path, lookups: int) -> int:
    """PostgreSQL connections the instance's event log opens for ``lookups`` partition look-ups."""
    from sqlalchemy import event

    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml)
    with DagsterInstance.from_config(str(home)) as inst:
        opened = []
        event.listen(inst.event_log_storage._engine, "connect", lambda *_: opened.append(1))  # type: ignore[attr-defined]
        inst.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT"])
        for _ in range(lookups):
            assert inst.has_dynamic_partition(SYMBOLS_PARTITIONS_NAME, "BTCUSDT")
        return len(opened)


def test_production_storage_keeps_its_postgres_connection(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-postgres as shipped connects per query; the storage dagster.yaml names reuses one."""
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url)
    stock = "storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL\n"
    assert _connections_for_lookups(stock, tmp_path / "stock", 20) >= 20
    assert _connections_for_lookups((ROOT / "dagster.yaml").read_text(), tmp_path / "ours", 20) == 1
