"""Funding history backfill against the fake exchange into real SecantusDB: paging, the request budget,
interval changes read from the data, REST replacing live estimates, idempotent re-runs, and the asset."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from bson.decimal128 import Decimal128
from dagster import DagsterInstance, materialize

from api.backfills import BACKFILL_ASSETS
from dm_assets.definitions import build_defs
from dm_assets.funding import build
from dm_assets.funding.assets import FUNDING_HISTORY_KEY, funding_history
from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_resources.binance import BinanceClient
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import load_settings
from tests.fake_exchange import FakeExchange, VirtualClock

H = 3_600_000
DAY0 = dt.date(2026, 2, 1)
DAYS = [(DAY0 + dt.timedelta(days=i)).isoformat() for i in range(45)]
T0, _ = day_bounds_ms(DAY0)
NOW = day_bounds_ms(DAYS[-1])[1] + 6 * H
SYMBOL = "ETHUSDT"
SCHEDULE = [(T0 - 10 * 24 * H, 8 * H), (T0 + 15 * 24 * H, 4 * H), (T0 + 30 * 24 * H, H)]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(NOW)


@pytest.fixture
def exchange(clock: VirtualClock) -> Iterator[FakeExchange]:
    ex = FakeExchange(now_ms=clock.now_ms).start()
    ex.set_funding_schedule(SYMBOL, SCHEDULE)
    ex.set_funding_schedule("BTCUSDT", [(T0 - 10 * 24 * H, 8 * H)])
    yield ex
    ex.stop()


def test_backfill_pages_respects_the_budget_reads_intervals_and_replaces_live_estimates(
    mongo_store: MongoStore, exchange: FakeExchange, clock: VirtualClock
) -> None:
    # The ingest service stored live estimates for two settlements (exact T, a predicted rate).
    live = [
        {
            "_id": f"{SYMBOL}:{t}",
            "symbol": SYMBOL,
            "funding_time": t,
            "funding_rate": Decimal128("0.00099999"),
            "mark_price": Decimal128("2000.00"),
            "event_time": t - 1500,
        }
        for t in (T0 + 8 * H, T0 + 16 * H)
    ]
    mongo_store.insert_idempotent("funding_rates", live)
    client = BinanceClient(exchange.url, now_ms=clock.now_ms, sleep=clock.sleep, funding_limit=1, funding_safety=1.0)
    fill = build.fill_funding(mongo_store, client, SYMBOL, DAYS, now=NOW)
    expected = 15 * 3 + 15 * 6 + 15 * 24  # 8h, then 4h, then 1h settlements in 45 days
    assert fill.ranges == [(T0, day_bounds_ms(DAYS[-1])[1])]  # 45 consecutive days: one range
    assert fill.fetched == expected and fill.inserted == expected - 2 and fill.replaced == 2
    assert fill.requests == 1  # 495 rows: one page of 1000
    assert [i["interval_hours"] for i in fill.intervals] == [8.0, 4.0, 1.0]
    assert client.used_weight == 0 and client.stats.rate_limited == 0
    stored = mongo_store.read_range("funding_rates", SYMBOL, T0, NOW)
    assert len(stored) == expected and len({d["funding_time"] for d in stored}) == expected
    replaced = {d["_id"]: d for d in stored}[f"{SYMBOL}:{T0 + 8 * H}"]
    assert replaced["source"] == "rest" and replaced["funding_rate"] != Decimal128("0.00099999")
    # Paging: a 1h symbol over 45 days with pages of 100 needs several requests, each waiting its turn
    # in the 1-request-per-5-minutes budget configured here (no 429 collected).
    client.funding_stats.requests = 0
    before = clock.now_ms()
    mongo_store.collection("funding_rates").delete_many({"symbol": SYMBOL})
    rows = client.fetch_funding_rates(SYMBOL, T0, day_bounds_ms(DAYS[-1])[1], page_size=100)
    assert len(rows) == expected and client.funding_stats.requests == 5
    assert client.funding_stats.window_waits >= 4 and clock.now_ms() - before >= 4 * 300_000
    assert client.stats.rate_limited == 0


def test_rerun_writes_nothing_and_gaps_between_days_make_separate_ranges(
    mongo_store: MongoStore, exchange: FakeExchange, clock: VirtualClock
) -> None:
    client = BinanceClient(exchange.url, now_ms=clock.now_ms, sleep=clock.sleep)
    days = [DAYS[0], DAYS[1], DAYS[5]]
    first = build.fill_funding(mongo_store, client, "BTCUSDT", days, now=NOW)
    assert len(first.ranges) == 2 and first.requests == 2 and first.inserted == 9
    again = build.fill_funding(mongo_store, client, "BTCUSDT", days, now=NOW)
    assert (again.inserted, again.replaced, again.unchanged) == (0, 0, 9)


def test_today_is_fetched_only_up_to_now(mongo_store: MongoStore, exchange: FakeExchange, clock: VirtualClock) -> None:
    client = BinanceClient(exchange.url, now_ms=clock.now_ms, sleep=clock.sleep)
    start, _ = day_bounds_ms(DAYS[-1])
    fill = build.fill_funding(mongo_store, client, "BTCUSDT", [DAYS[-1]], now=start + 9 * H)
    assert fill.ranges == [(start, start + 9 * H)] and fill.fetched == 2  # 00:00 and 08:00


def test_the_asset_and_the_api_backfill_carry_funding_beside_the_candles(
    mongo_store: MongoStore, exchange: FakeExchange, sqlite_metadata_url: str, instance: DagsterInstance
) -> None:
    assert ("funding", "funding_history") in BACKFILL_ASSETS
    res = ResourceSet(
        load_settings(
            mongo_url=mongo_store.url,
            mongo_db=mongo_store.db_name,
            metadata_url=sqlite_metadata_url,
            binance_rest_url=exchange.url,
        )
    )
    graph = build_defs(res).resolve_asset_graph()
    assert graph.get(FUNDING_HISTORY_KEY).partitions_def == DATE_SYMBOL_PARTITIONS
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    result = materialize(
        [funding_history], instance=instance, partition_key=partition_key(DAYS[20], SYMBOL), resources=res.as_dict()
    )
    assert result.success
    meta = result.asset_materializations_for_node("funding__funding_history")[0].metadata
    assert meta["fetched"].value == 6 and meta["inserted"].value == 6  # a 4h day
    assert len(mongo_store.read_range("funding_rates", SYMBOL, *day_bounds_ms(DAYS[20]))) == 6
