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


def mongo_rows_before(http: httpx.Client, at: int) -> int:
    """The newest stored row at or before ``at`` (served with allow_stale)."""
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": at, "allow_stale": "true"})
    assert r.status_code == 200, r.text
    return int(r.json()["snapshot_time"])


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_inside_a_lost_interval_the_answer_is_a_404_naming_the_span_and_its_reason(
    http: httpx.Client, market: BookMarket
) -> None:
    gap_start = market.events[599].diff.event_time
    resynced = market.events[800].diff.event_time
    at = (gap_start + resynced) // 2
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": at})
    assert r.status_code == 404, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["query", "at"]
    msg = err["msg"]
    assert f"from {_iso(gap_start)} to {_iso(resynced)}" in msg, msg
    assert "continuity break: pu" in msg and "healed span" in msg and "allow_stale=true" in msg
    # Just inside the span, a proven row less than one step older exists: it is still no book of `at`.
    just_in = gap_start + 1
    row = mongo_rows_before(http, just_in)
    assert just_in - row < 10_000
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": just_in})
    assert r.status_code == 404 and "continuity break" in r.text
    # allow_stale: the last valid book before the span, with its age and the span it precedes.
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": at, "allow_stale": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stale"] is True and body["snapshot_time"] <= gap_start
    assert body["age_ms"] == at - body["snapshot_time"] >= 10_000
    assert body["invalid"]["start"] == gap_start and body["invalid"]["end"] == resynced
    assert body["invalid"]["status"] == "healed" and body["invalid"]["reason"].startswith("continuity break")
    bids, asks = market.truth_at(body["snapshot_time"])
    assert body["bids"] == [[str(p), str(q)] for p, q in bids]
    assert body["asks"] == [[str(p), str(q)] for p, q in asks]


def test_a_past_days_unrecoverable_span_is_named_so(http: httpx.Client, market: BookMarket) -> None:
    # The diffs stop ~10 minutes into the day and the day is final: the rest has no book and never will.
    last = market.events[-1].diff.event_time
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": END - 3_600_000})
    assert r.status_code == 404
    msg = r.json()["detail"][0]["msg"]
    assert "unrecoverable span" in msg and f"no stored diff after {_iso(last)}" in msg, msg


def test_before_the_first_order_book_and_in_the_future_are_refused_naming_at(
    http: httpx.Client, market: BookMarket
) -> None:
    first_sync = market.events[100].diff.event_time
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": START + 1_000})
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["query", "at"]
    assert f"before the first order book of {SYMBOL}: its history starts at {_iso(first_sync)}" in r.text, r.text
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": "2999-01-01T00:00:00Z"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "at"]
    assert "is in the future" in r.json()["detail"][0]["msg"]


def test_after_the_last_rebuild_the_book_is_not_proven_yet(mongo_store: MongoStore, http: httpx.Client) -> None:
    other = "ETHUSDT"
    m = BookMarket(seed=6, start_ms=START + 60_000)
    m.run(600)
    mongo_store.insert_idempotent("depth_updates", [diff_document(other, e.diff) for e in m.events])
    snap = _snapshot_doc(m.snapshot_after(10)) | {"symbol": other, "_id": f"{other}:{m.events[10].diff.final_id}"}
    mongo_store.insert_idempotent("depth_snapshots", [snap])
    run_at = m.events[400].diff.event_time
    build.build_orderbook_day(mongo_store, other, DAY, now=run_at)
    r = http.get("/data/orderbook", params={"pair": other, "at": run_at + 30_000})
    assert r.status_code == 404
    assert f"not proven at {_iso(run_at + 30_000)} yet" in r.text and f"up to {_iso(run_at)}" in r.text, r.text
    r = http.get("/data/orderbook", params={"pair": other, "at": run_at + 30_000, "allow_stale": "true"})
    assert r.status_code == 200 and r.json()["stale"] is True and r.json()["invalid"] is None


def test_malformed_parameters_are_422_and_an_unknown_pair_404(http: httpx.Client) -> None:
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": "yesterday"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "at"]
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "depth": 0})
    assert r.status_code == 422
    r = http.get("/data/orderbook", params={"pair": SYMBOL, "at": START, "allow_stale": "maybe"})
    assert r.status_code == 422
    r = http.get("/data/orderbook", params={"pair": "NOPE1", "at": START})
    assert r.status_code == 404


def test_dm_client_raises_not_found_inside_a_gap_and_returns_the_stale_book_only_when_asked(
    http: httpx.Client, market: BookMarket
) -> None:
    from dm_client import DMClient
    from dm_client.errors import NotFound

    at = (market.events[599].diff.event_time + market.events[800].diff.event_time) // 2
    with DMClient(str(http.base_url), retries=0) as client:
        with pytest.raises(NotFound, match="continuity break"):
            client.orderbook(SYMBOL, at=at)
        book = client.orderbook(SYMBOL, at=at, depth=3, allow_stale=True)
    assert book["stale"] is True and book["age_ms"] >= 10_000 and len(book["bids"]) == 3
