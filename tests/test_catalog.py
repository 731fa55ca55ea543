"""Catalog and lineage: discovered from real SecantusDB data, written to the metadata store by the catalog job
run through the full Definitions (so the lineage is the real asset graph)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from bson.decimal128 import Decimal128
from dagster import AssetKey, DagsterInstance, Definitions, build_schedule_context, definitions, execute_job
from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository

from dm_assets.analytics import build as abuild
from dm_assets.candles import build as cbuild
from dm_assets.catalog import build as catalog
from dm_assets.catalog.schedules import catalog_schedule
from dm_assets.definitions import build_defs
from dm_assets.partitions import day_bounds_ms
from dm_resources.binance import BinanceClient, Kline
from dm_resources.metadata.schemas import HealthMetricIn
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import load_settings
from tests.fake_exchange import FakeExchange

ROOT = Path(__file__).resolve().parent.parent
DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)
NOW = END + 3_600_000
M = 60_000


@pytest.fixture
def exchange_now_ms() -> int:
    return NOW


def _run_catalog_job(resources: ResourceSet, instance: DagsterInstance) -> None:
    job = build_defs(resources).resolve_job_def("catalog_job")
    result = job.execute_in_process(instance=instance)
    assert result.success


def _seed(store: MongoStore, meta: MetadataStore, ex: FakeExchange) -> None:
    """BTCUSDT: raw websocket klines, 1m candles and 1h, a few trades, analytics; a health row."""
    client = BinanceClient(ex.url, now_ms=lambda: NOW, sleep=lambda s: None)
    rows = ex.klines("BTCUSDT", "1m", START, END, now_ms=NOW)
    store.insert_idempotent("klines", [Kline.from_row(r).to_document("BTCUSDT", "1m", source="ws") for r in rows])
    cbuild.build_1m_day(store, meta, client, "BTCUSDT", DAY, now=NOW)
    cbuild.build_higher_day(store, meta, "BTCUSDT", DAY, "1h", now=NOW)
    store.insert_idempotent(
        "agg_trades",
        [
            {
                "_id": f"ETHUSDT:{i}",
                "symbol": "ETHUSDT",
                "agg_id": i,
                "price": Decimal128("3000.5"),
                "qty": Decimal128("0.25"),
                "first_trade_id": i,
                "last_trade_id": i,
                "trade_time": START + i * 1000,
                "event_time": START + i * 1000 + 1,
                "buyer_is_maker": i % 2 == 0,
            }
            for i in range(5)
        ],
    )
    store.upsert("analytics", abuild.symbol_documents(store, "BTCUSDT", END, ["volatility"]))
    meta.upsert_health(
        [
            HealthMetricIn(
                symbol="BTCUSDT",
                interval="1m",
                day=dt.date.fromisoformat(DAY),
                completeness=100.0,
                freshness=90.0,
                consistency=100.0,
                score=97.5,
            )
        ]
    )


def test_catalog_lists_every_dataset_with_schema_and_lineage(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
) -> None:
    _seed(mongo_store, meta, exchange)
    before = int(time.time() * 1000)
    _run_catalog_job(resources, instance)
    after = int(time.time() * 1000)

    datasets = {d.id: d for d in meta.list_datasets()}
    assert set(datasets) == {
        "klines:BTCUSDT:1m",
        "candles:BTCUSDT:1m",
        "candles:BTCUSDT:1h",
        "agg_trades:ETHUSDT",
        "analytics.volatility:BTCUSDT:1m",
        "analytics.volatility:BTCUSDT:1h",
    }

    c1m = datasets["candles:BTCUSDT:1m"]
    assert (c1m.kind, c1m.symbol, c1m.interval, c1m.collection) == ("candles", "BTCUSDT", "1m", "candles")
    assert (c1m.row_count, c1m.first_time, c1m.last_time) == (1440, START, END - M)
    assert (before - c1m.last_time) / 1000 <= c1m.freshness_seconds <= (after - c1m.last_time) / 1000
    assert c1m.health_score == 97.5
    types = {f.name: f.type for f in c1m.schema_}
    assert types["open_time"] == "int64" and types["close"] == "double" and types["source"] == "string"
    assert types["trades"] == "int64" and types["interval"] == "string"
    assert next(f for f in c1m.schema_ if f.name == "open_time").description.startswith("bucket open time")
    assert datasets["candles:BTCUSDT:1h"].row_count == 24
    assert datasets["candles:BTCUSDT:1h"].health_score is None  # only a 1m health row exists

    klines = {f.name: f.type for f in datasets["klines:BTCUSDT:1m"].schema_}
    assert klines["close"] == "decimal128" and klines["open_time"] == "int64"
    assert datasets["klines:BTCUSDT:1m"].row_count == 1440

    trades = datasets["agg_trades:ETHUSDT"]
    assert (trades.row_count, trades.first_time, trades.last_time, trades.interval) == (5, START, START + 4000, None)
    assert {f.name: f.type for f in trades.schema_}["buyer_is_maker"] == "bool"
    assert trades.health_score is None

    vol = datasets["analytics.volatility:BTCUSDT:1m"]
    assert (vol.row_count, vol.first_time, vol.last_time) == (1, END, END)
    assert {f.name: f.type for f in vol.schema_}["values"] == "object"
    assert "volatility of BTCUSDT" in (vol.description or "")

    # Lineage of candles/candles_1m: what feeds it and everything it feeds.
    view = meta.lineage_for("candles/candles_1m")
    assert {e.upstream for e in view.upstream} == {"raw/klines", "raw/agg_trades", "binance/klines_archive"}
    assert {e.downstream for e in view.downstream} == {
        "candles/candles_5m",
        "candles/candles_15m",
        "candles/candles_1h",
        "candles/candles_4h",
        "candles/candles_1d",
        "quality/audit_results",
        "quality/health_scores",
        "analytics/volatility",
        "analytics/volume",
        "analytics/trend",
        "analytics/correlation",
        "analytics/pattern_series",
        "catalog/datasets",
    }
    edge = next(e for e in view.downstream if e.downstream == "candles/candles_5m")
    assert edge.transformation is not None and edge.transformation.startswith("5m candles derived from the stored 1m")
    assert edge.transformation.endswith(".") and edge.asset_group == "candles"
    assert all(e.transformation for e in meta.lineage())

    # A second (incremental) refresh keeps the same catalog and graph.
    edges = len(meta.lineage())
    _run_catalog_job(resources, instance)
    again = {d.id: d for d in meta.list_datasets()}
    assert {k: (d.row_count, d.first_time, d.last_time) for k, d in again.items()} == {
        k: (d.row_count, d.first_time, d.last_time) for k, d in datasets.items()
    }
    assert len(meta.lineage()) == edges


def test_empty_store_gives_an_empty_catalog_and_the_code_lineage(
    instance: DagsterInstance, resources: ResourceSet, meta: MetadataStore
) -> None:
    _run_catalog_job(resources, instance)
    assert meta.list_datasets() == []
    graph = build_defs(resources).resolve_asset_graph()
    expected = sum(len(graph.get(k).parent_keys) for k in graph.get_all_asset_keys())
    assert len(meta.lineage()) == expected > 0


def _quotes(symbol: str, times: list[int]) -> list[dict]:
    return [
        {
            "_id": f"{symbol}:{t}",
            "symbol": symbol,
            "update_id": t,
            "event_time": t,
            "transaction_time": t,
            "bid_price": Decimal128("1.0"),
            "bid_qty": Decimal128("2"),
            "ask_price": Decimal128("1.1"),
            "ask_qty": Decimal128("3"),
        }
        for t in times
    ]


def test_refresh_adds_the_new_tail_and_recounts_on_demand(mongo_store: MongoStore, meta: MetadataStore) -> None:
    now = int(time.time() * 1000)
    mongo_store.insert_idempotent("book_tickers", _quotes("BTCUSDT", [now - 50_000, now - 40_000, now - 30_000]))
    first = catalog.refresh_catalog(mongo_store, meta, now=now)  # empty catalog: discovers every symbol
    assert [(d.key(), d.row_count, d.last_time) for d in first.datasets] == [("book_tickers:BTCUSDT", 3, now - 30_000)]
    assert first.datasets[0].freshness_seconds == 30.0

    # Two new quotes after the last one, and one late quote before it.
    mongo_store.insert_idempotent("book_tickers", _quotes("BTCUSDT", [now - 20_000, now - 10_000, now - 45_000]))
    second = catalog.refresh_catalog(mongo_store, meta, now=now)
    assert [(d.row_count, d.first_time, d.last_time) for d in second.datasets] == [(5, now - 50_000, now - 10_000)]
    full = catalog.refresh_catalog(mongo_store, meta, now=now, full=True)  # the daily recount sees the late one
    assert [d.row_count for d in full.datasets] == [6]
    assert meta.get_dataset("book_tickers:BTCUSDT").row_count == 6  # type: ignore[union-attr]


def test_symbols_outside_the_candidates_wait_for_discover_all(mongo_store: MongoStore, meta: MetadataStore) -> None:
    now = int(time.time() * 1000)
    mongo_store.insert_idempotent("book_tickers", _quotes("BTCUSDT", [now - 1000]))
    catalog.refresh_catalog(mongo_store, meta, now=now)
    mongo_store.insert_idempotent("book_tickers", _quotes("XRPUSDT", [now - 1000]))
    assert [d.key() for d in catalog.refresh_catalog(mongo_store, meta, now=now).datasets] == ["book_tickers:BTCUSDT"]
    given = catalog.refresh_catalog(mongo_store, meta, now=now, symbols=["XRPUSDT"])
    assert [d.key() for d in given.datasets] == ["book_tickers:BTCUSDT", "book_tickers:XRPUSDT"]
    mongo_store.insert_idempotent("book_tickers", _quotes("ADAUSDT", [now - 1000]))
    everything = catalog.refresh_catalog(mongo_store, meta, now=now, discover_all=True)
    assert {d.key() for d in everything.datasets} == {
        "book_tickers:ADAUSDT",
        "book_tickers:BTCUSDT",
        "book_tickers:XRPUSDT",
    }


def test_emptied_dataset_stays_with_zero_rows(mongo_store: MongoStore, meta: MetadataStore) -> None:
    now = int(time.time() * 1000)
    mongo_store.insert_idempotent("book_tickers", _quotes("BTCUSDT", [now - 3000, now - 2000]))
    first = catalog.refresh_catalog(mongo_store, meta, now=now)
    assert [d.key() for d in first.datasets] == ["book_tickers:BTCUSDT"] and first.emptied == []
    mongo_store.collection("book_tickers").delete_many({})
    second = catalog.refresh_catalog(mongo_store, meta, now=now)
    assert second.datasets == [] and second.emptied == ["book_tickers:BTCUSDT"]
    row = meta.get_dataset("book_tickers:BTCUSDT")
    assert row is not None and (row.row_count, row.first_time, row.last_time) == (0, None, None)
    assert row.schema_  # the last known schema is kept
    assert catalog.refresh_catalog(mongo_store, meta, now=now).emptied == []  # reported once


def test_daily_recount_is_spread_by_dataset() -> None:
    day = 86_400_000
    base = 1_780_000_000_000 - 1_780_000_000_000 % day
    slots = {}
    for name in ("candles:BTCUSDT:1m", "agg_trades:ETHUSDT", "klines:SOLUSDT:1m"):
        # Exactly one 10-minute refresh of the day recounts each dataset.
        due = [t for t in range(base, base + day, 600_000) if catalog.recount_due(name, t - 600_000, t)]
        assert len(due) == 1
        slots[name] = due[0]
    assert len(set(slots.values())) == 3
    assert catalog.recount_due("x", base, base + day)  # a day without refresh: always recount


@definitions
def location_from_env() -> Definitions:
    """The code location as a daemon loads it: definitions built in the run's process from DM_* variables."""
    return build_defs(ResourceSet(load_settings()))


def test_lineage_of_a_subset_run_launched_from_the_code_location(
    instance: DagsterInstance, resources: ResourceSet, meta: MetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that reconstructs its job from the code location (as launched runs do) has a repository:
    the lineage asset alone, selected as a subset, still records the whole graph."""
    s = resources.settings
    for var, value in {
        "DM_MONGO_URL": s.mongo_url,
        "DM_MONGO_DB": s.mongo_db,
        "DM_METADATA_URL": s.metadata_url,
        "DM_BINANCE_REST_URL": s.binance_rest_url,
    }.items():
        monkeypatch.setenv(var, value)
    repo = ReconstructableRepository.for_module("tests.test_catalog", "location_from_env", working_directory=str(ROOT))
    with execute_job(
        ReconstructableJob(repo, "catalog_job"), instance=instance, asset_selection=[AssetKey(["catalog", "lineage"])]
    ) as result:
        assert result.success
    graph = build_defs(resources).resolve_asset_graph()
    expected = {
        (p.to_user_string(), k.to_user_string()) for k in graph.get_all_asset_keys() for p in graph.get(k).parent_keys
    }
    assert {(e.upstream, e.downstream) for e in meta.lineage()} == expected
    assert ("candles/candles_1m", "quality/audit_results") in expected
    assert meta.list_datasets() == []  # only the selected asset ran
    event = instance.get_latest_materialization_event(AssetKey(["catalog", "lineage"]))
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.metadata["edges"].value == len(expected)


def test_schema_types_and_declared_fields() -> None:
    sample = {
        "_id": "X:1",
        "symbol": "X",
        "price": Decimal128("1.5"),
        "bids": [[Decimal128("1"), Decimal128("2")]],
        "empty": [],
        "when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "flag": True,
        "n": None,
    }
    types = {f.name: f.type for f in catalog.schema_of("agg_trades", sample)}
    assert types["price"] == "decimal128" and types["bids"] == "array<array<decimal128>>"
    assert types["empty"] == "array" and types["when"] == "date" and types["flag"] == "bool" and types["n"] == "null"
    assert types["trade_time"] == "unknown"  # declared in the data model, absent from the sample


def test_first_sentence() -> None:
    assert catalog.first_sentence("Builds x (see a.py). Then y.") == "Builds x (see a.py)."
    assert catalog.first_sentence("No full stop\n  at all") == "No full stop at all"
    assert catalog.first_sentence(None) is None


def test_catalog_schedule_every_ten_minutes_and_discovers_at_midnight(instance: DagsterInstance) -> None:
    def request(hour: int, minute: int) -> dict:
        when = dt.datetime(2026, 11, 23, hour, minute, tzinfo=dt.UTC)
        req = catalog_schedule(build_schedule_context(instance=instance, scheduled_execution_time=when))
        return req.run_config["ops"]["catalog__datasets"]["config"]

    assert request(0, 0)["discover_all"] is True
    assert request(10, 20)["discover_all"] is False
    assert catalog_schedule.job_name == "catalog_job"
    assert catalog_schedule.cron_schedule == "*/10 * * * *" and catalog_schedule.execution_timezone == "UTC"
