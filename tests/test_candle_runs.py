"""The candle step in runs of many partitions: blocking per partition, retries, a 418, the dm/symbol tag.

Real SecantusDB, SQLite metadata, the fake exchange over HTTP; Dagster in process with a partition
range (what a backfill run carries).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from bson.decimal128 import Decimal128
from dagster import (
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    build_schedule_context,
    build_sensor_context,
    materialize,
)

from dm_assets.candles.assets import CANDLE_ASSETS, CANDLE_SOURCE_SPECS, CANDLE_SPECS
from dm_assets.candles.retry import is_transient_store_error
from dm_assets.candles.schedules import audit_schedule
from dm_assets.candles.sensors import gap_sensor
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms
from dm_assets.quality.assets import QUALITY_ASSETS
from dm_resources.binance import BinanceBanned, BinanceClient, Kline, MongoBanRegistry
from dm_resources.candle_store import BUCKETS, CandleStore, ConcurrentWriteError
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import MongoResource, ResourceSet
from dm_resources.run_coordinator import SYMBOL_TAG, range_label, symbol_tag
from tests.conftest import MongoServer
from tests.dagster_helpers import materializations
from tests.fake_exchange import FakeExchange

DAYS = ("2026-03-09", "2026-03-10")
NOW = day_bounds_ms("2026-03-11")[0] + 3_600_000
M = 60_000
ALL = [*CANDLE_SOURCE_SPECS, *CANDLE_ASSETS, *QUALITY_ASSETS]


@pytest.fixture
def exchange_now_ms() -> int:
    return NOW


def run_range(
    instance: DagsterInstance, resources: dict[str, Any], start: str, end: str, **kw: Any
) -> ExecuteInProcessResult:
    tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
    return materialize(ALL, instance=instance, resources=resources, tags=tags, raise_on_error=False, **kw)


def keys_of(result: ExecuteInProcessResult, path: str) -> set[str]:
    return {str(m.partition) for m in materializations(result, path)}


def test_a_run_of_many_partitions_builds_every_interval_in_one_step(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore, exchange: FakeExchange
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT", "ETHUSDT"])
    result = run_range(instance, resources.as_dict(), f"{DAYS[0]}|BTCUSDT", f"{DAYS[1]}|ETHUSDT")
    assert result.success
    want = {f"{d}|{s}" for d in DAYS for s in ("BTCUSDT", "ETHUSDT")}
    for spec in CANDLE_SPECS:
        assert keys_of(result, spec.key.to_user_string()) == want
    assert keys_of(result, "quality/health_scores") == want
    steps = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_SUCCESS}
    assert steps == {"candles", "quality__audit_results", "quality__health_scores"}  # one candle step
    # One REST page of the least weight per 499 minutes, in parallel: 3 per day and symbol.
    limits = [p["limit"] for p in exchange.requests_to("/fapi/v1/klines")]
    assert sorted(limits) == sorted(["499", "499", "442"] * 4)
    # Checks once per partition and interval: every outcome recorded once, by the candle step.
    meta = MetadataStore(resources.settings.metadata_url)
    logs = meta.audit_logs(limit=10_000)
    assert len(logs) == 4 * (6 + 5 * 4) and {r.run_id for r in logs} == {result.run_id}
    evaluations = [e for e in result.get_asset_check_evaluations() if e.asset_key == CANDLE_SPECS[0].key]
    assert len(evaluations) == 6 and all(e.passed for e in evaluations)  # one per check, over the run


def test_a_failing_blocking_check_stops_its_partition_only(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore, exchange: FakeExchange
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT", "ETHUSDT"])
    lo, hi = day_bounds_ms(DAYS[1])
    rows = exchange.klines("ETHUSDT", "1m", lo, hi)
    docs = [Kline.from_row(r).to_document("ETHUSDT", "1m", source="ws") for r in rows]
    docs[700]["high"] = Decimal128(f"{float(docs[700]['high'].to_decimal()) * 1.8:.2f}")  # a websocket bad print
    mongo_store.insert_idempotent("klines", docs)
    result = run_range(instance, resources.as_dict(), f"{DAYS[0]}|BTCUSDT", f"{DAYS[1]}|ETHUSDT")
    bad = f"{DAYS[1]}|ETHUSDT"
    good = {f"{d}|{s}" for d in DAYS for s in ("BTCUSDT", "ETHUSDT")} - {bad}
    assert not result.success  # the blocking check fails the step, as Dagster's blocking checks do
    assert keys_of(result, "candles/candles_1m") == good | {bad}  # 1m is stored, flagged
    for path in ("candles/candles_5m", "candles/candles_1h", "candles/candles_1d"):
        assert keys_of(result, path) == good, path  # the other partitions' derived intervals are written
    cs = CandleStore(mongo_store)
    assert cs.count("ETHUSDT", "5m", lo, hi) == 0 and cs.count("BTCUSDT", "5m", lo, hi) == 288
    assert cs.count("ETHUSDT", "5m", *day_bounds_ms(DAYS[0])) == 288
    meta = MetadataStore(resources.settings.metadata_url)
    health = {(h.symbol, h.day.isoformat()): h for h in meta.health(interval="1m")}
    assert (
        health[("ETHUSDT", DAYS[1])].score < 100
        and "no_bad_prints" in health[("ETHUSDT", DAYS[1])].details["failed_checks"]
    )
    assert all(h.score == 100 for k, h in health.items() if k != ("ETHUSDT", DAYS[1]))


def test_a_418_stops_the_run_and_no_other_run_sends_to_the_banned_ip(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore, exchange: FakeExchange
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT"])
    exchange.fail_next(418, count=1, retry_after=600)
    first = run_range(instance, resources.as_dict(), f"{DAYS[0]}|BTCUSDT", f"{DAYS[1]}|BTCUSDT")
    assert not first.success
    failure = next(e for e in first.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert "HTTP 418" in failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert not [e for e in first.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    sent = len(exchange.requests_to("/fapi/v1/klines"))
    assert 1 <= sent <= 8  # the requests already in flight when the ban came; none after it
    ban = mongo_store.db[MongoBanRegistry.COLLECTION].find_one({})
    assert ban is not None and ban["until"] > NOW and "418" in ban["reason"]

    # Another run (another process's client: a fresh resource set) reads the shared ban and sends nothing.
    second = run_range(instance, resources.as_dict(), f"{DAYS[0]}|BTCUSDT", f"{DAYS[1]}|BTCUSDT")
    assert not second.success and len(exchange.requests_to("/fapi/v1/klines")) == sent
    client = BinanceClient(exchange.url, ban_registry=MongoBanRegistry(mongo_store, exchange.url))
    with pytest.raises(BinanceBanned, match="request not sent"):
        client.fetch_klines("BTCUSDT", "1m", *day_bounds_ms(DAYS[0]))


def test_transient_store_errors_are_retried_and_others_are_not(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore, tmp_path: Path
) -> None:
    assert is_transient_store_error(ConcurrentWriteError("x")) and not is_transient_store_error(ValueError("x"))
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT"])
    # A store that is down when the step starts and back a moment later: the step is retried.
    (tmp_path / "late").mkdir()
    late = MongoServer(tmp_path / "late")
    db = f"t_{uuid.uuid4().hex[:8]}"
    flaky = MongoResource(url=late.url, database=db, retry_attempts=1, server_selection_timeout_ms=300)
    res = {**resources.as_dict(), "mongo": flaky}
    done: dict[str, ExecuteInProcessResult] = {}
    worker = threading.Thread(
        target=lambda: done.update(
            ok=materialize(ALL, instance=instance, resources=res, partition_key=f"{DAYS[0]}|BTCUSDT")
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while (
            not [  # the first attempt met the store down and asked for a retry
                r
                for run in instance.get_runs(limit=1)
                for r in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY).records
            ]
        ):
            assert time.monotonic() < deadline and worker.is_alive(), "no retry requested"
            time.sleep(0.1)
        late.start()  # from this thread: the server dies with the thread that started it (PDEATHSIG)
        worker.join(timeout=120)
        ok = done["ok"]
        retried = [e for e in ok.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
        assert ok.success and retried and retried[0].step_key == "candles"
    finally:
        late.stop()

    # Data this code cannot read is not a transient error: one attempt, a clear failure.
    lo = day_bounds_ms(DAYS[1])[0]
    mongo_store.db[BUCKETS].insert_one(
        {"_id": f"BTCUSDT:1m:{DAYS[1]}", "symbol": "BTCUSDT", "interval": "1m", "start": lo, "enc": 99, "v": 1}
    )
    bad = materialize(
        ALL, instance=instance, resources=resources.as_dict(), partition_key=f"{DAYS[1]}|BTCUSDT", raise_on_error=False
    )
    assert not bad.success
    assert not [e for e in bad.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    failure = next(e for e in bad.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert "encoding 99" in failure.step_failure_data.error.message  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the dm/symbol tag


def test_symbol_tag_rule() -> None:
    assert symbol_tag({"dagster/partition": "2026-01-05|BTCUSDT"}) == "BTCUSDT"
    assert symbol_tag({"dagster/partition": "ETHUSDT"}) == "ETHUSDT"  # per-symbol assets (analytics)
    assert symbol_tag({"dagster/partition": "2026-01-05"}) is None  # a date: no symbol
    rng = {"dagster/asset_partition_range_start": "2026-01-01|BTCUSDT"}
    assert symbol_tag({**rng, "dagster/asset_partition_range_end": "2026-02-01|BTCUSDT"}) == "BTCUSDT"
    assert symbol_tag({**rng, "dagster/asset_partition_range_end": "2026-02-01|SOLUSDT"}) == range_label(
        "BTCUSDT", "SOLUSDT"
    )
    assert symbol_tag({SYMBOL_TAG: "XRPUSDT", "dagster/partition": "2026-01-05|BTCUSDT"}) == "XRPUSDT"
    assert symbol_tag({}) is None


def test_sensor_and_schedule_runs_carry_the_symbol_tag(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore
) -> None:
    from dm_assets.analytics.schedules import analytics_schedule

    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT", "ETHUSDT"])
    when = dt.datetime(2026, 11, 23, 10, 15, tzinfo=dt.UTC)
    audits = list(audit_schedule(build_schedule_context(instance=instance, scheduled_execution_time=when)))
    assert [r.tags[SYMBOL_TAG] for r in audits] == ["BTCUSDT", "ETHUSDT"]
    analytics = analytics_schedule(build_schedule_context(instance=instance, scheduled_execution_time=when))
    per_symbol = [r for r in analytics if r.partition_key]  # type: ignore[union-attr]
    assert per_symbol and all(r.tags[SYMBOL_TAG] == r.partition_key for r in per_symbol)
    res = {"mongo": resources.mongo, "metadata": resources.metadata}
    with build_sensor_context(instance=instance, resources=res) as ctx:
        gaps = gap_sensor(ctx)
    assert gaps.run_requests and all(
        r.tags[SYMBOL_TAG] == str(r.partition_key).split("|")[1] for r in gaps.run_requests
    )


def test_production_instance_queues_through_the_tagging_coordinator_with_event_batching() -> None:
    """dagster.yaml and the Helm values agree: our coordinator, the dm/symbol limit, event settings in env."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    instance = yaml.safe_load((root / "dagster.yaml").read_text())
    coordinator = instance["run_coordinator"]
    assert (coordinator["module"], coordinator["class"]) == (
        "dm_resources.run_coordinator",
        "SymbolTaggingRunCoordinator",
    )
    limit = {"key": SYMBOL_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    assert limit in coordinator["config"]["tag_concurrency_limits"]
    helm = yaml.safe_load((root / "deploy" / "helm" / "dagster-values.yaml").read_text())
    custom = helm["dagsterDaemon"]["runCoordinator"]
    assert custom["type"] == "CustomRunCoordinator"
    assert custom["config"]["customRunCoordinator"]["class"] == "SymbolTaggingRunCoordinator"
    assert limit in custom["config"]["customRunCoordinator"]["config"]["tag_concurrency_limits"]
    for role in ("dagsterWebserver", "dagsterDaemon"):  # they import our coordinator: our image
        assert (
            helm[role]["image"]["repository"]
            == helm["dagster-user-deployments"]["deployments"][0]["image"]["repository"]
        )
        env = {e["name"]: e["value"] for e in helm[role]["env"]}
        assert (
            env["DAGSTER_EVENT_BATCH_SIZE"] == "500"
            and env["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] == "true"
        )
    config = next(yaml.safe_load_all((root / "deploy" / "k8s" / "config.yaml").read_text()))["data"]
    assert config["DAGSTER_EVENT_BATCH_SIZE"] == "500"  # run pods take dm-config
