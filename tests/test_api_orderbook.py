"""``GET /data/orderbook`` over real HTTP on a book rebuilt from simulated diffs in real SecantusDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.testing import serve
from dm_assets.orderbook import build
from dm_assets.orderbook.book import Snapshot
from dm_assets.partitions import day_bounds_ms
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings
from tests.book_sim import BookMarket, diff_document

DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"


def _snapshot_doc(snap: Snapshot) -> dict:
    from bson.decimal128 import Decimal128

    return {
        "_id": f"{SYMBOL}:{snap.last_update_id}",
        "symbol": SYMBOL,
        "snapshot_time": snap.time,
        "transaction_time": snap.time,
        "last_update_id": snap.last_update_id,
        "limit": 1000,
        "fetched_at": snap.time,
        "bids": [[Decimal128(p), Decimal128(q)] for p, q in snap.bids],
        "asks": [[Decimal128(p), Decimal128(q)] for p, q in snap.asks],
    }


@pytest.fixture
def market(mongo_store: MongoStore) -> BookMarket:
    m = BookMarket(seed=5, start_ms=START + 60_000)
    m.run(1200)
    lost = set(range(600, 605))
    mongo_store.insert_idempotent(
        "depth_updates", [diff_document(SYMBOL, e.diff) for i, e in enumerate(m.events) if i not in lost]
    )
    mongo_store.insert_idempotent("depth_snapshots", [_snapshot_doc(m.snapshot_after(i)) for i in (100, 800)])
    build.build_orderbook_day(mongo_store, SYMBOL, DAY, now=END + 3_600_000)
    return m


@pytest.fixture
def http(mongo_store: MongoStore, tmp_path: Path, market: BookMarket) -> Iterator[httpx.Client]:
    settings = load_settings(
        mongo_url=mongo_store.url, mongo_db=mongo_store.db_name, metadata_url=f"sqlite:///{tmp_path / 'm.db'}"
    )
    meta = MetadataStore(settings.metadata_url)
    meta.migrate()
    app = create_app(settings, mongo=mongo_store, meta=meta)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client
    meta.close()


def test_book_at_a_time_is_the_newest_proven_book_at_or_before_it(http: httpx.Client, market: BookMarket) -> None:
    synced = market.events[100].diff.event_time
    g = (synced // 10_000 + 3) * 10_000  # a grid time well after the sync
    for at, age in ((g, 0), (g + 7_000, 7_000)):
        r = http.get("/data/orderbook", params={"pair": "btcusdt", "at": str(at)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["snapshot_time"] == g and body["age_ms"] == age and body["stale"] is False
        bids, asks = market.truth_at(g)
        assert body["bids"] == [[str(p), str(q)] for p, q in bids]
        assert body["asks"] == [[str(p), str(q)] for p, q in asks]
        assert body["depth"] == 20 and body["spread_bps"] > 0
    # depth limits the levels; ISO-8601 works like epoch ms.
    iso = (
        "2026-03-10T"
        + f"{(g - START) // 3_600_000:02d}:{(g - START) // 60_000 % 60:02d}:{(g - START) // 1000 % 60:02d}Z"
    )
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": iso, "depth": 5})
    assert r.status_code == 200 and len(r.json()["bids"]) == 5 and r.json()["snapshot_time"] == g


def test_inside_a_lost_interval_the_answer_is_marked_stale(http: httpx.Client, market: BookMarket) -> None:
    gap_start = market.events[599].diff.event_time
    resynced = market.events[800].diff.event_time
    at = (gap_start + resynced) // 2
    body = http.get("/data/orderbook", params={"pair": SYMBOL, "at": at}).json()
    assert body["stale"] is True and body["snapshot_time"] <= gap_start and body["age_ms"] >= 10_000


def test_no_book_before_the_first_sync_or_long_ago_is_404_and_bad_at_is_422(http: httpx.Client) -> None:
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": START + 1_000})
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["query", "at"]
    r = http.get("/data/orderbook", params={"pair": SYMBOL})  # default now: nothing recent
    assert r.status_code == 404
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": "yesterday"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "at"]
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "depth": 0})
    assert r.status_code == 422
    r = http.get("/data/orderbook", params={"pair": "NOPE1", "at": START})
    assert r.status_code == 404
