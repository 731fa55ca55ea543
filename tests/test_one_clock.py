"""One clock per run: candles, audit results, health scores and the order book of a run all judge the
partition as of the run's time, here frozen at noon with the ``dm/as_of`` tag (the exchange's clock too)."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, materialize

from dm_assets.candles import audit
from dm_assets.candles.assets import CANDLE_ASSETS
from dm_assets.clock import AS_OF_TAG
from dm_assets.orderbook.assets import orderbook_snapshots
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_assets.quality.assets import QUALITY_ASSETS
from dm_resources.binance import Kline
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from tests.book_sim import BookMarket, diff_document, snapshot_document
from tests.fake_exchange import FakeExchange

DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)
NOON = START + 12 * 3_600_000
SYMBOL = "BTCUSDT"


@pytest.fixture
def exchange_now_ms() -> int:
    return NOON


def test_a_run_frozen_at_noon_judges_the_day_up_to_noon_everywhere(
    instance: DagsterInstance, resources: ResourceSet, mongo_store: MongoStore, exchange: FakeExchange
) -> None:
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    rows = exchange.klines(SYMBOL, "1m", START, NOON)
    mongo_store.insert_idempotent("klines", [Kline.from_row(r).to_document(SYMBOL, "1m", source="ws") for r in rows])
    market = BookMarket(seed=41, start_ms=NOON - 5 * 60_000)
    market.run(560)  # to ~noon minus a few seconds, then nothing: the book up to noon only
    market.events[:] = [e for e in market.events if e.diff.event_time < NOON]
    mongo_store.insert_idempotent("depth_updates", [diff_document(SYMBOL, e.diff) for e in market.events])
    mongo_store.insert_idempotent("depth_snapshots", [snapshot_document(SYMBOL, market.snapshot_after(10))])
    result = materialize(
        [*CANDLE_ASSETS, *QUALITY_ASSETS, orderbook_snapshots],
        instance=instance,
        partition_key=partition_key(DAY, SYMBOL),
        resources=resources.as_dict(),
        tags={AS_OF_TAG: str(NOON)},
    )
    assert result.success
    meta = MetadataStore(resources.settings.metadata_url)
    try:
        health = {h.interval: h for h in meta.health(symbol=SYMBOL)}
        # Half a day of candles is a complete day as of noon, for the quality assets as for the candle checks.
        assert health["1m"].score == 100.0 and health["1m"].completeness == 100.0
        quality_rows = [r for r in meta.audit_logs(SYMBOL, limit=1000) if r.check_name == "no_gaps"]
        assert quality_rows and all(r.passed for r in quality_rows)
        # The order book too: its window ends at noon, not at the wall clock.
        book = result.asset_materializations_for_node("orderbook__orderbook_snapshots")[0].metadata["detail"].value
        assert book["window"][1] == NOON and not book["final"]
        assert health["book"].details["window"][1] == NOON  # type: ignore[index]
        # The same data judged by a later clock (what the wall clock did) is half a day of gaps: the freeze mattered.
        later = audit.check_partition(mongo_store, meta, SYMBOL, DAY, "1m", now=END)
        assert not next(r for r in later if r.name == "no_gaps").passed
    finally:
        meta.close()
