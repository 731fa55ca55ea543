"""The order-book asset end to end: fake exchange snapshots + stored diffs in real SecantusDB → proven
top-20 rows, the continuity check, audit_logs and health_metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, materialize

from dm_assets.orderbook import build, report
from dm_assets.orderbook.assets import ORDERBOOK_KEY, orderbook_snapshots
from dm_assets.orderbook.book import BookStats
from dm_assets.orderbook.schedules import orderbook_requests
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_resources.binance import BinanceClient
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import load_settings
from tests.book_sim import BookMarket, depth_body, diff_document
from tests.fake_exchange import FakeExchange

DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)
NOW = END + 3_600_000
SYMBOL = "BTCUSDT"
LOST = range(2600, 2610)  # messages that never reached the store: a pu break after midnight


@pytest.fixture
def exchange() -> Iterator[FakeExchange]:
    ex = FakeExchange(now_ms=NOW).start()
    yield ex
    ex.stop()


def _seed(store: MongoStore, ex: FakeExchange) -> BookMarket:
    """~40 minutes of diffs around midnight; snapshots taken 'live' through the REST client."""
    market = BookMarket(seed=11, start_ms=START - 20 * 60_000)
    market.run(4800)
    assert market.events[2000].diff.event_time < START < market.events[2600].diff.event_time
    store.insert_idempotent(
        "depth_updates", [diff_document(SYMBOL, e.diff) for i, e in enumerate(market.events) if i not in LOST]
    )
    client = BinanceClient(ex.url, now_ms=lambda: NOW, sleep=lambda s: None)
    for i in (500, 3000):  # one before midnight, one after the break
        ex.set_depth(SYMBOL, depth_body(market.snapshot_after(i)))
        build.take_snapshot(client, store, SYMBOL)
    return market


def test_day_rebuild_matches_the_truth_counts_the_break_and_is_idempotent(
    mongo_store: MongoStore, exchange: FakeExchange
) -> None:
    market = _seed(mongo_store, exchange)
    first = build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=NOW)
    s = first.stats
    assert s.breaks == 1 and s.resyncs == 1 and s.snapshots_used == 2 and s.crossed == 0
    rows = mongo_store.read_range("orderbook_snapshots", SYMBOL, START, END)
    assert len(rows) == first.documents > 0
    assert rows[0]["snapshot_time"] == START  # warm-up from the snapshot before midnight
    for r in rows:
        bids, asks = market.truth_at(r["snapshot_time"])
        assert [(p.to_decimal(), q.to_decimal()) for p, q in r["bids"]] == bids
        assert [(p.to_decimal(), q.to_decimal()) for p, q in r["asks"]] == asks
        assert r["_id"] == f"{SYMBOL}:{r['snapshot_time']}" and r["spread_bps"] > 0
    # The lost interval has no rows: from the last event before the gap to the first after the re-sync.
    gap = (market.events[2599].diff.event_time, market.events[3000].diff.event_time)
    assert (gap[0], gap[1]) == s.invalid_intervals[0][:2]
    assert not [r for r in rows if gap[0] < r["snapshot_time"] < gap[1]]
    assert not first.passed and first.health()["score"] < 100
    # Spread analytics read the rebuilt book: imbalance of the resting book, not of diffs.
    from dm_assets.analytics import build as abuild

    (spread,) = abuild.symbol_documents(mongo_store, SYMBOL, START + 10 * 60_000, kinds=["spread"])
    in_window = [r for r in rows if r["snapshot_time"] < START + 10 * 60_000]
    assert spread["values"]["imbalance_source"] == "orderbook"
    assert spread["values"]["book_snapshots"] == len(in_window) > 0
    again = build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=NOW)
    assert (again.upserted, again.modified, again.deleted) == (0, 0, 0)
    assert again.stats == first.stats and again.replay == "full"  # a final day keeps no checkpoint


def test_asset_reports_the_break_in_its_check_audit_logs_and_health(
    mongo_store: MongoStore, exchange: FakeExchange, sqlite_metadata_url: str, instance: DagsterInstance
) -> None:
    _seed(mongo_store, exchange)
    res = ResourceSet(
        load_settings(
            mongo_url=mongo_store.url,
            mongo_db=mongo_store.db_name,
            metadata_url=sqlite_metadata_url,
            binance_rest_url=exchange.url,
        )
    )
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    result = materialize(
        [orderbook_snapshots],
        instance=instance,
        partition_key=partition_key(DAY, SYMBOL),
        resources=res.as_dict(),
        raise_on_error=False,
    )
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and checks[0].asset_key == ORDERBOOK_KEY and not checks[0].passed
    assert checks[0].metadata["breaks"].value == 1
    meta = MetadataStore(sqlite_metadata_url)
    try:
        audit = meta.audit_logs(SYMBOL, check_name=report.CHECK_NAME)
        assert len(audit) == 1 and not audit[0].passed and audit[0].partition_key == f"{DAY}|{SYMBOL}"
        assert audit[0].details["breaks"] == 1 and audit[0].severity in {"WARN", "ERROR"}
        health = meta.health(symbol=SYMBOL, interval=report.HEALTH_INTERVAL)
        assert len(health) == 1 and health[0].score < 100 and health[0].consistency == 90.0
        # ... and the API serves it as the pair's "book" health.
        import httpx

        from api.app import create_app
        from api.testing import serve

        with serve(create_app(res.settings, mongo=mongo_store, meta=meta)) as url:
            body = httpx.get(f"{url}/health", params={"pair": SYMBOL, "period": "book"}, timeout=30).json()
        assert [(r["interval"], r["score"]) for r in body["rows"]] == [("book", health[0].score)]
    finally:
        meta.close()
    # A past day takes no REST snapshot (Binance only serves the book as of now).
    assert len(exchange.requests_to("/fapi/v1/depth")) == 2


def test_health_and_check_pass_only_when_nothing_was_found() -> None:
    clean = report.BookDay(SYMBOL, DAY, (START, END), BookStats(valid_ms=END - START))
    assert clean.passed and clean.health()["score"] == 100.0 and clean.severity == "INFO"
    broken = report.BookDay(SYMBOL, DAY, (START, END), BookStats(breaks=2, invalid_ms=60_000))
    assert not broken.passed and broken.severity == "WARN"
    assert broken.health()["consistency"] == 80.0 and broken.health()["score"] < 100
    dark = report.BookDay(SYMBOL, DAY, (START, END), BookStats(invalid_ms=86_400_000 // 10))
    assert dark.severity == "ERROR" and dark.health()["completeness"] == 90.0
    crossed = report.BookDay(SYMBOL, DAY, (START, END), BookStats(crossed=1))
    assert not crossed.passed
    # Diffs stopped at 06:00 (ingest down): never disproven, never proven either. It fails.
    stopped = report.BookDay(SYMBOL, DAY, (START, END), BookStats(valid_ms=6 * 3_600_000, unproven_ms=18 * 3_600_000))
    assert not stopped.passed and stopped.severity == "ERROR" and stopped.health()["freshness"] == 0.0
    live_edge = report.BookDay(SYMBOL, DAY, (START, END), BookStats(valid_ms=END - START - 30_000, unproven_ms=30_000))
    assert live_edge.passed
    nothing = report.BookDay(SYMBOL, DAY, (START, END), BookStats(invalid_ms=END - START))
    assert nothing.severity == "ERROR" and nothing.health()["score"] == 30.0  # only "no incidents" left


def test_schedule_requests_todays_partition_per_symbol() -> None:
    import datetime as dt

    when = dt.datetime(2026, 3, 10, 12, 5, tzinfo=dt.UTC)
    reqs = orderbook_requests(["BTCUSDT", "ETHUSDT"], when)
    assert [r.partition_key for r in reqs] == [partition_key(DAY, "BTCUSDT"), partition_key(DAY, "ETHUSDT")]
    assert len({r.run_key for r in reqs}) == 2
    # Just after midnight yesterday is rebuilt once more (its tail is proven by today's first diffs).
    early = orderbook_requests(["BTCUSDT"], dt.datetime(2026, 3, 11, 0, 5, tzinfo=dt.UTC))
    assert [r.partition_key for r in early] == [partition_key(DAY, "BTCUSDT"), partition_key("2026-03-11", "BTCUSDT")]


def test_schedule_evaluates_against_the_instance(instance: DagsterInstance) -> None:
    import datetime as dt

    from dagster import SkipReason, build_schedule_context

    from dm_assets.orderbook.schedules import orderbook_schedule

    when = dt.datetime(2026, 3, 10, 12, 5, tzinfo=dt.UTC)
    assert isinstance(orderbook_schedule(build_schedule_context(instance, scheduled_execution_time=when)), SkipReason)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    reqs = orderbook_schedule(build_schedule_context(instance, scheduled_execution_time=when))
    assert [r.partition_key for r in reqs] == [partition_key(DAY, SYMBOL)]
