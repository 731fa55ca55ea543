"""Analytics assets end to end: candles built from the fake exchange into real SecantusDB, materialized
with a real Dagster instance, documents compared with the pure functions on the same input."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from bson.decimal128 import Decimal128
from dagster import AssetKey, DagsterInstance, build_schedule_context, materialize

from dm_assets.analytics import build as abuild
from dm_assets.analytics import (
    compute_correlation,
    compute_funding,
    compute_spread,
    compute_trend,
    compute_volatility,
    compute_volume,
)
from dm_assets.analytics.assets import SYMBOL_KEYS, analytics_key, correlation, run_config, symbol_analytics
from dm_assets.analytics.schedules import analytics_schedule
from dm_assets.candles import build as cbuild
from dm_assets.candles.compute import candles_frame
from dm_assets.definitions import build_defs
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms
from dm_resources.binance import BinanceClient
from dm_resources.candle_store import CandleStore
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from tests.fake_exchange import FakeExchange

DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)
NOW = END + 3_600_000
AS_OF = END  # the day's last bar closed at END: the 1m window is exactly the day
SYMBOLS = ("BTCUSDT", "ETHUSDT")
M = 60_000


@pytest.fixture
def exchange_now_ms() -> int:
    return NOW


def _build_candles(store: MongoStore, url: str, meta_url: str) -> None:
    meta = MetadataStore(meta_url)
    meta.migrate()
    client = BinanceClient(url, now_ms=lambda: NOW, sleep=lambda s: None)
    for s in SYMBOLS:
        cbuild.build_1m_day(store, meta, client, s, DAY, now=NOW)
        cbuild.build_higher_day(store, meta, s, DAY, "1h", now=NOW)
    meta.close()


def _seed_quotes_and_funding(store: MongoStore, symbol: str) -> dict[str, pd.DataFrame]:
    """Raw book tickers, depth, mark prices and funding as the ingest service stores them (Decimal128)."""
    quotes, depth, marks, funding = [], [], [], []
    for i in range(120):  # one quote every 30 s over the last hour
        t = END - 3_600_000 + i * 30_000
        bid, ask = f"{65000 + i % 7}.{i % 10}0", f"{65001 + i % 7 + (i % 3)}.{i % 10}0"
        quotes.append(
            {
                "_id": f"{symbol}:{i}",
                "symbol": symbol,
                "update_id": i,
                "event_time": t,
                "transaction_time": t,
                "bid_price": Decimal128(bid),
                "bid_qty": Decimal128("1.5"),
                "ask_price": Decimal128(ask),
                "ask_qty": Decimal128("2.25"),
            }
        )
    for i in range(10):  # depth in the last 5 minutes
        t = END - 300_000 + i * 25_000
        depth.append(
            {
                "_id": f"{symbol}:{1000 + i}",
                "symbol": symbol,
                "event_time": t,
                "transaction_time": t,
                "first_update_id": 1000 + i,
                "final_update_id": 1000 + i,
                "prev_final_update_id": 999 + i,
                "bids": [[Decimal128("65000.1"), Decimal128(f"{i + 1}.5")], [Decimal128("64999"), Decimal128("0")]],
                "asks": [[Decimal128("65001.2"), Decimal128(f"{10 - i}.25")]],
            }
        )
    for i in range(30):  # mark prices every 2 minutes in the last hour
        t = END - 3_600_000 + i * 120_000
        marks.append(
            {
                "_id": f"{symbol}:{t}",
                "symbol": symbol,
                "event_time": t,
                "mark_price": Decimal128("65000.5"),
                "index_price": Decimal128("65000.1"),
                "estimated_settle_price": Decimal128("65000.2"),
                "funding_rate": Decimal128(f"0.0000{i % 9 + 1}"),
                "next_funding_time": END + 8 * 3_600_000,
            }
        )
    for i in range(12):  # 4 days of 8-hourly settlements
        t = END - (12 - i) * 8 * 3_600_000 + 3  # a few ms of jitter, as Binance has
        funding.append(
            {
                "_id": f"{symbol}:{t}",
                "symbol": symbol,
                "funding_time": t,
                "funding_rate": Decimal128(f"0.000{i % 4 + 1}"),
                "mark_price": Decimal128("65000"),
                "event_time": t - 1,
            }
        )
    store.insert_idempotent("book_tickers", quotes)
    store.insert_idempotent("depth_updates", depth)
    store.insert_idempotent("mark_prices", marks)
    store.insert_idempotent("funding_rates", funding)
    # The test's own float frames of the same input (not via the asset's readers).
    return {
        "quotes": pd.DataFrame(
            {
                "event_time": [q["event_time"] for q in quotes],
                "bid_price": [float(str(q["bid_price"])) for q in quotes],
                "ask_price": [float(str(q["ask_price"])) for q in quotes],
            }
        ),
        "depth": pd.DataFrame(
            {
                "event_time": [d["event_time"] for d in depth],
                "bids": [[[float(str(p)), float(str(q))] for p, q in d["bids"]] for d in depth],
                "asks": [[[float(str(p)), float(str(q))] for p, q in d["asks"]] for d in depth],
            }
        ),
        "marks": pd.DataFrame(
            {
                "event_time": [m["event_time"] for m in marks],
                "funding_rate": [float(str(m["funding_rate"])) for m in marks],
                "next_funding_time": [m["next_funding_time"] for m in marks],
            }
        ),
        "funding": pd.DataFrame(
            {
                "funding_time": [f["funding_time"] for f in funding],
                "funding_rate": [float(str(f["funding_rate"])) for f in funding],
            }
        ),
    }


def _frame(store: MongoStore, symbol: str, interval: str) -> pd.DataFrame:
    return candles_frame(CandleStore(store).read_range(symbol, interval, START, END))


def _doc(store: MongoStore, symbol: str, kind: str, interval: str) -> dict:
    found = store.collection("analytics").find_one({"_id": f"{symbol}:{kind}:{interval}:{END}"})
    assert found is not None, (symbol, kind, interval)
    return found


def test_analytics_assets_are_downstream_of_candles(resources: ResourceSet) -> None:
    graph = build_defs(resources).resolve_asset_graph()
    children_1m = {k.to_user_string() for k in graph.get(AssetKey(["candles", "candles_1m"])).child_keys}
    assert {"analytics/volatility", "analytics/volume", "analytics/trend", "analytics/correlation"} <= children_1m
    assert {p.to_user_string() for p in graph.get(analytics_key("spread")).parent_keys} == {
        "raw/book_tickers",
        "raw/depth_updates",
        "orderbook/orderbook_snapshots",
    }
    assert {p.to_user_string() for p in graph.get(analytics_key("funding")).parent_keys} == {
        "raw/funding_rates",
        "raw/mark_prices",
        "funding/funding_history",
    }
    for kind in ("volatility", "volume", "trend", "spread", "funding", "correlation"):
        node = graph.get(analytics_key(kind))
        assert node.group_name == "analytics" and set(node.kinds) == {"mongodb", "pandas"}
    assert graph.get(analytics_key("volatility")).partitions_def is not None
    assert graph.get(analytics_key("correlation")).partitions_def is None


def test_materialized_documents_equal_the_pure_functions(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    exchange: FakeExchange,
    sqlite_metadata_url: str,
) -> None:
    _build_candles(mongo_store, exchange.url, sqlite_metadata_url)
    inputs = _seed_quotes_and_funding(mongo_store, "BTCUSDT")
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, list(SYMBOLS))
    res = resources.as_dict()

    for symbol in SYMBOLS:
        result = materialize(
            [symbol_analytics],
            instance=instance,
            partition_key=symbol,
            resources=res,
            run_config=run_config(AS_OF, correlation=False),
        )
        assert result.success
    corr_run = materialize(
        [correlation], instance=instance, resources=res, run_config=run_config(AS_OF, symbol_assets=False)
    )
    assert corr_run.success
    # every dataset written told the API cache (dataset_versions), once per dataset, not per document
    versions = {d["_id"]: d for d in mongo_store.db["dataset_versions"].find({"kind": "analytics"})}
    assert "analytics:BTCUSDT:volatility:1m" in versions and "analytics:*:correlation:1m" in versions
    assert all(v["v"] == 1 for v in versions.values())

    frames = {(s, iv): _frame(mongo_store, s, iv) for s in SYMBOLS for iv in ("1m", "1h")}
    assert len(frames["BTCUSDT", "1m"]) == 1440 and len(frames["BTCUSDT", "1h"]) == 24
    for spec in (sp for sp in abuild.CANDLE_SPECS if sp.interval in ("1m", "1h")):
        for s in SYMBOLS:
            candles = frames[s, spec.interval]
            vol = _doc(mongo_store, s, "volatility", spec.interval)
            assert vol["values"] == compute_volatility(candles, spec.interval, spec.volatility_window).to_dict()
            assert (vol["symbol"], vol["kind"], vol["interval"], vol["window_end"]) == (
                s,
                "volatility",
                spec.interval,
                END,
            )
            assert vol["values"]["bars"] == len(candles)
            # A day of 1m bars fills the 60-bar window; 24 hourly bars cannot fill 24 returns (needs 25).
            assert vol["values"]["insufficient_data"] is (spec.interval == "1h")
            volume = _doc(mongo_store, s, "volume", spec.interval)
            assert volume["values"] == compute_volume(candles, spec.interval, spec.volume_window).to_dict()
            trend = _doc(mongo_store, s, "trend", spec.interval)
            full = compute_trend(candles, spec.interval, spec.trend_fast, spec.trend_slow).to_dict()
            assert trend["values"] == abuild.trim_trend(full)
            assert trend["values"]["sma_crossovers"] == full["sma_crossovers"][-abuild.MAX_CROSSOVERS :]
            assert trend["values"]["sma_crossovers_total"] == len(full["sma_crossovers"])
        corr = _doc(mongo_store, "*", "correlation", spec.interval)
        expected = compute_correlation(
            {s: frames[s, spec.interval] for s in SYMBOLS}, spec.interval, spec.correlation_windows
        )
        assert corr["values"] == {"windows": [r.to_dict() for r in expected]}
        assert corr["values"]["windows"][0]["symbols"] == list(SYMBOLS)

    spread = _doc(mongo_store, "BTCUSDT", "spread", "1h")
    assert (
        spread["values"]
        == compute_spread(inputs["quotes"], window_end=END, depth=inputs["depth"], levels=abuild.DEPTH_LEVELS).to_dict()
    )
    assert spread["values"]["count"] == 120 and spread["values"]["imbalance_count"] == 10
    funding = _doc(mongo_store, "BTCUSDT", "funding", "30d")
    assert funding["values"] == compute_funding(inputs["funding"], inputs["marks"]).to_dict()
    assert funding["values"]["interval_hours"] == 8.0
    # ETHUSDT has candles but no quotes or funding: no spread/funding documents rather than empty ones.
    assert mongo_store.count("analytics", "ETHUSDT", {"kind": {"$in": ["spread", "funding"]}}) == 0
    # Two symbols × 3 candle kinds × 2 intervals + BTC spread + funding + 2 correlation documents.
    assert mongo_store.count("analytics") == 2 * 3 * 2 + 2 + 2

    mat = result.asset_materializations_for_node("symbol_analytics")
    assert {m.asset_key for m in mat} == set(SYMBOL_KEYS)
    vol_meta = next(m for m in mat if m.asset_key == analytics_key("volatility")).metadata
    assert vol_meta["documents"].value == 2 and "| ETHUSDT | volatility | 1m |" in vol_meta["summary"].value

    # Re-running the same tick rewrites the same documents: nothing new appears.
    again = materialize(
        [symbol_analytics],
        instance=instance,
        partition_key="BTCUSDT",
        resources=res,
        run_config=run_config(AS_OF, correlation=False),
    )
    assert again.success
    assert all(m.metadata["upserted"].value == 0 for m in again.asset_materializations_for_node("symbol_analytics"))
    assert mongo_store.count("analytics") == 2 * 3 * 2 + 2 + 2


def test_empty_store_writes_nothing_and_succeeds(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT"])
    res = resources.as_dict()
    result = materialize(
        [symbol_analytics],
        instance=instance,
        partition_key="BTCUSDT",
        resources=res,
        run_config=run_config(AS_OF, correlation=False),
    )
    corr = materialize(
        [correlation], instance=instance, resources=res, run_config=run_config(None, symbol_assets=False)
    )
    assert result.success and corr.success
    mats = [
        *result.asset_materializations_for_node("symbol_analytics"),
        *corr.asset_materializations_for_node("analytics__correlation"),
    ]
    assert len(mats) == 6
    assert all(m.metadata["documents"].value == 0 for m in mats)
    assert mongo_store.count("analytics") == 0
    assert abuild.symbol_documents(mongo_store, "BTCUSDT", AS_OF) == []
    assert abuild.correlation_documents(mongo_store, [], AS_OF) == []


def test_subset_materializes_only_the_selected_kind(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    exchange: FakeExchange,
    sqlite_metadata_url: str,
) -> None:
    _build_candles(mongo_store, exchange.url, sqlite_metadata_url)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT"])
    result = materialize(
        [symbol_analytics],
        selection=[analytics_key("volatility")],
        instance=instance,
        partition_key="BTCUSDT",
        resources=resources.as_dict(),
        run_config=run_config(AS_OF, correlation=False),
    )
    assert result.success
    assert [m.asset_key for m in result.asset_materializations_for_node("symbol_analytics")] == [
        analytics_key("volatility")
    ]
    kinds = {d["kind"] for d in mongo_store.read_range("analytics", "BTCUSDT")}
    assert kinds == {"volatility"}


def test_schedule_requests_one_run_per_symbol_and_one_correlation(instance: DagsterInstance) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["ETHUSDT", "BTCUSDT"])
    when = dt.datetime(2026, 11, 23, 10, 15, tzinfo=dt.UTC)
    ctx = build_schedule_context(instance=instance, scheduled_execution_time=when)
    requests = list(analytics_schedule(ctx))
    as_of = int(when.timestamp() * 1000)
    per_symbol, corr = requests[:-1], requests[-1]
    assert [r.partition_key for r in per_symbol] == ["BTCUSDT", "ETHUSDT"]
    assert all(list(r.asset_selection) == SYMBOL_KEYS for r in per_symbol)
    assert all(r.run_config["ops"]["symbol_analytics"]["config"]["as_of_ms"] == as_of for r in per_symbol)
    assert corr.partition_key is None and list(corr.asset_selection) == [analytics_key("correlation")]
    assert corr.run_config["ops"]["analytics__correlation"]["config"]["as_of_ms"] == as_of
    assert len({r.run_key for r in requests}) == 3
    assert analytics_schedule.cron_schedule == "*/15 * * * *"
    assert analytics_schedule.execution_timezone == "UTC"


def test_schedule_skips_without_symbols(instance: DagsterInstance) -> None:
    ctx = build_schedule_context(instance=instance, scheduled_execution_time=dt.datetime(2026, 11, 23, tzinfo=dt.UTC))
    result = analytics_schedule(ctx)
    assert "no symbol partitions" in result.skip_message  # type: ignore[union-attr]


def test_readers_convert_raw_decimals() -> None:
    docs = [
        {
            "event_time": 5,
            "bid_price": Decimal128("0.00012345"),
            "bid_qty": Decimal128("3"),
            "ask_price": Decimal128("0.00012346"),
            "ask_qty": Decimal128("4.5"),
        }
    ]
    frame = abuild.book_tickers_frame(docs)
    assert frame.loc[0, "bid_price"] == 0.00012345 and frame.loc[0, "ask_qty"] == 4.5
    assert list(abuild.book_tickers_frame([]).columns) == ["event_time", "bid_price", "bid_qty", "ask_price", "ask_qty"]
    marks = abuild.mark_prices_frame(
        [
            {"event_time": 1, "funding_rate": Decimal128("0.0001")},
            {"event_time": 2, "funding_rate": Decimal128("0.0002"), "next_funding_time": 99},
        ]
    )
    assert marks["next_funding_time"].isna().tolist() == [True, False]
    spec_1h = next(sp for sp in abuild.CANDLE_SPECS if sp.interval == "1h")
    assert abuild.candle_window(spec_1h, START + 90 * M) == (
        START + 60 * M - 30 * 86_400_000,
        START + 60 * M,
    )


def test_analytics_do_not_build_on_a_flagged_candle(mongo_store: MongoStore) -> None:
    """A bad print the checks flagged is a missing bar for analytics, repaired or not yet."""
    spec = next(s for s in abuild.CANDLE_SPECS if s.interval == "1m")
    as_of = NOW - NOW % 60_000
    start, end = abuild.candle_window(spec, as_of)
    rows = []
    for i, t in enumerate(range(end - 30 * 60_000, end, 60_000)):
        price = 100.0 + 0.01 * i
        rows.append(
            {
                "open_time": t,
                "open": price,
                "high": price + 0.05,
                "low": price - 0.05,
                "close": price,
                "volume": 1.0,
                "quote_volume": price,
                "taker_buy_volume": 0.5,
                "taker_buy_quote_volume": price / 2,
                "trades": 3,
                "source": "kline",
                "flags": [],
            }
        )
    bad_time = rows[10]["open_time"]
    rows[10] = {**rows[10], "high": 180.0, "close": 180.0, "flags": ["bad_print"]}
    rows[20] = {**rows[20], "flags": ["bad_print", "verified"]}  # kept: the exchange had nothing better
    CandleStore(mongo_store).sync_range("BTCUSDT", "1m", start, end, rows)

    frame = abuild.read_candle_window(mongo_store, "BTCUSDT", spec, as_of)
    assert len(frame) == 28 and bad_time not in set(frame["open_time"].tolist())
    assert frame["close"].max() < 101  # the 180 print never reaches an estimator
