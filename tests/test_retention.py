"""Retention: whole days past retention deleted, never a day whose consuming partition is pending."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from bson.decimal128 import Decimal128
from dagster import AssetKey, AssetMaterialization, DagsterInstance, materialize

from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_assets.retention import plan
from dm_assets.retention.assets import partition_status, retention
from dm_resources.mongo import MongoStore
from dm_resources.resources import MongoResource
from dm_resources.settings import SettingsError, load_settings

H = 3_600_000
SYMBOL = "BTCUSDT"
DAYS = [f"2026-02-0{i}" for i in range(1, 7)]
NOW = day_bounds_ms("2026-03-20")[0] + 12 * H
CANDLES_1M = AssetKey(["candles", "candles_1m"])


def test_plan_keeps_pending_days_and_merges_contiguous_deletable_ones() -> None:
    ok = {"2026-02-01": True, "2026-02-02": True, "2026-02-03": False, "2026-02-04": True}
    ranges, kept = plan.plan_days([*ok, "2026-02-05"], ok)
    assert ranges == [
        (day_bounds_ms("2026-02-01")[0], day_bounds_ms("2026-02-02")[1]),
        day_bounds_ms("2026-02-04"),
    ]
    assert kept == ["2026-02-03", "2026-02-05"]  # unknown status is pending, not deletable
    assert plan.cutoff_ms(NOW, 30) == day_bounds_ms("2026-02-18")[0]
    assert plan.days_before(dt.date(2026, 2, 16), day_bounds_ms("2026-02-18")[0]) == ["2026-02-16", "2026-02-17"]


def test_settings_refuse_retention_below_what_the_assets_read() -> None:
    with pytest.raises(SettingsError, match="DM_RETENTION_AGG_TRADES_DAYS"):
        load_settings(retention_agg_trades_days=2)
    assert load_settings(retention_agg_trades_days=0).retention_days("agg_trades") == 0  # keep forever
    table = {r["collection"]: r for r in plan.retention_table(load_settings())}
    assert table["agg_trades"]["retention_days"] == 30 and "candles/candles_1m" in table["agg_trades"]["never_deletes"]
    assert set(table) == {
        "agg_trades",
        "depth_updates",
        "depth_snapshots",
        "book_tickers",
        "tickers",
        "mark_prices",
        "analytics",
    }


def _trade(t: int, i: int) -> dict:
    return {
        "_id": f"{SYMBOL}:{i}",
        "symbol": SYMBOL,
        "agg_id": i,
        "trade_time": t,
        "price": Decimal128("100"),
        "qty": Decimal128("1"),
    }


def _seed(store: MongoStore) -> None:
    trades = [_trade(day_bounds_ms(d)[0] + h * H, n * 100 + h) for n, d in enumerate(DAYS) for h in range(24)]
    trades.append(_trade(day_bounds_ms("2025-12-31")[0] + H, 99_999))  # before the first partition
    store.insert_idempotent("agg_trades", trades)
    quotes = [
        {"_id": f"{SYMBOL}:{u}", "symbol": SYMBOL, "event_time": t, "update_id": u}
        for u, t in ((1, day_bounds_ms("2026-03-01")[0]), (2, NOW - H))
    ]
    store.insert_idempotent("book_tickers", quotes)
    store.insert_idempotent(
        "depth_updates",
        [{"_id": f"{SYMBOL}:7", "symbol": SYMBOL, "event_time": day_bounds_ms(DAYS[0])[0] + H, "final_update_id": 7}],
    )
    store.insert_idempotent(
        "tickers", [{"_id": f"{SYMBOL}:1", "symbol": SYMBOL, "event_time": day_bounds_ms("2026-01-05")[0]}]
    )
    old, new = day_bounds_ms("2025-12-01")[0], NOW - H
    store.insert_idempotent(
        "analytics",
        [
            {"_id": f"{s}:volatility:1m:{t}", "symbol": s, "kind": "volatility", "interval": "1m", "window_end": t}
            for s in (SYMBOL, "*")
            for t in (old, new)
        ],
    )


def _materialize_candles(instance: DagsterInstance, days: list[str]) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    for d in days:
        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=CANDLES_1M, partition=str(partition_key(d, SYMBOL)))
        )


def test_retention_never_deletes_a_day_whose_candle_partition_is_pending(
    mongo_store: MongoStore, instance: DagsterInstance
) -> None:
    _seed(mongo_store)
    done = ["2026-02-01", "2026-02-02", "2026-02-04", "2026-02-06"]  # 03 and 05 are pending
    _materialize_candles(instance, done)
    settings = load_settings(retention_tickers_days=0)
    status = partition_status(instance, {SYMBOL})

    def run(dry: bool) -> dict[str, plan.CollectionReport]:
        reps = plan.apply_retention(
            mongo_store, plan.policies(settings), [SYMBOL], NOW, settings.partition_start, status, dry_run=dry
        )
        return {r.collection: r for r in reps}

    dry = run(True)
    assert dry["agg_trades"].deleted == 4 * 24 + 1 and mongo_store.count("agg_trades") == 6 * 24 + 1
    reps = run(False)
    trades = reps["agg_trades"]
    assert trades.deleted == 4 * 24 + 1
    assert trades.kept_pending == {SYMBOL: ["2026-02-03", "2026-02-05"]}
    left = {
        dt.datetime.fromtimestamp(d["trade_time"] / 1000, dt.UTC).date().isoformat()
        for d in mongo_store.read_range("agg_trades", SYMBOL)
    }
    assert left == {"2026-02-03", "2026-02-05"}
    # Unpartitioned consumers: by age only, past the cutoff.
    assert reps["book_tickers"].deleted == 1 and [
        d["update_id"] for d in mongo_store.read_range("book_tickers", SYMBOL)
    ] == [2]
    assert reps["analytics"].deleted == 2 and mongo_store.count("analytics") == 2  # the symbol's and the correlation's
    assert reps["tickers"].deleted == 0 and mongo_store.count("tickers") == 1  # retention 0: kept forever
    # The order book of that day was never built: its diffs stay although candles_1m of the day is done.
    assert reps["depth_updates"].kept_pending == {SYMBOL: [DAYS[0]]} and mongo_store.count("depth_updates") == 1
    again = run(False)
    assert again["agg_trades"].deleted == 0


def test_the_retention_asset_runs_through_dagster(mongo_store: MongoStore, instance: DagsterInstance) -> None:
    _seed(mongo_store)
    _materialize_candles(instance, DAYS)
    result = materialize(
        [retention],
        instance=instance,
        resources={"mongo": MongoResource(url=mongo_store.url, database=mongo_store.db_name)},
        run_config={"ops": {"maintenance__retention": {"config": {"dry_run": False}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("maintenance__retention")[0].metadata
    assert meta["deleted"].value >= 6 * 24
    assert mongo_store.read_range("agg_trades", SYMBOL, day_bounds_ms(DAYS[0])[0], day_bounds_ms(DAYS[-1])[1]) == []


def test_catalog_and_api_report_each_datasets_retention(mongo_store: MongoStore, tmp_path: Path) -> None:
    import httpx

    from api.app import create_app
    from api.testing import serve
    from dm_assets.catalog.build import DatasetRef, dataset_description
    from dm_resources.metadata.store import MetadataStore

    settings = load_settings(
        mongo_url=mongo_store.url,
        mongo_db=mongo_store.db_name,
        metadata_url=f"sqlite:///{tmp_path / 'm.db'}",
        retention_book_tickers_days=3,
    )
    meta = MetadataStore(settings.metadata_url)
    meta.migrate()
    with serve(create_app(settings, mongo=mongo_store, meta=meta)) as url:
        rows = {r["collection"]: r for r in httpx.get(f"{url}/catalog/retention", timeout=30).json()}
    meta.close()
    assert (
        rows["book_tickers"]["retention_days"] == 3 and rows["book_tickers"]["env"] == "DM_RETENTION_BOOK_TICKERS_DAYS"
    )
    assert rows["agg_trades"]["never_deletes"] == "a day whose candles/candles_1m partition is not materialized"
    # The catalog's dataset descriptions carry it too (from the process settings: the defaults here).
    text = dataset_description(DatasetRef("agg_trades", SYMBOL, None, "agg_trades"))
    assert text.endswith(
        "Retention: 30 days (whole UTC days deleted daily, except days whose candles/candles_1m "
        "partition is still pending)."
    )
    assert "Retention" not in dataset_description(DatasetRef("candles", SYMBOL, "1m", "candles"))
