"""One book path: the generated session's depth diffs and the simulated exchange's REST snapshots sync."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise

from dm_assets.orderbook.book import Diff, Snapshot, levels_of, reconstruct
from dm_resources.binance import BinanceClient
from ingest_service.bookpath import TICK_MS, BookPath
from ingest_service.generator import Rates, generate_session
from ingest_service.pricepath import Market
from tests.fake_exchange import FakeExchange

START = 1_767_225_600_000 + 40 * 86_400_000 + 300 * 60_000  # a minute-aligned time in 2026
SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def _diffs(events: list[dict], symbol: str) -> list[Diff]:
    return [
        Diff(d["U"], d["u"], d["pu"], d["E"], levels_of(d["b"]), levels_of(d["a"]))
        for e in events
        if (d := e["data"])["e"] == "depthUpdate" and d["s"] == symbol
    ]


def test_a_book_rebuilt_from_the_session_syncs_with_the_exchanges_snapshot_and_matches_it_later() -> None:
    events = list(generate_session(SYMBOLS, 3, start_ms=START, seed=9, rates=Rates(trades_per_s=1), market=Market()))
    taken_at = START + 40_000
    with FakeExchange(symbols=SYMBOLS, now_ms=taken_at) as ex:
        client = BinanceClient(ex.url, now_ms=lambda: taken_at, sleep=lambda s: None)
        snaps = {s: client.fetch_depth(s, limit=1000) for s in SYMBOLS}
        ex.now_ms = START + 150_000
        later = {s: client.fetch_depth(s, limit=1000) for s in SYMBOLS}
    for s in SYMBOLS:
        diffs = _diffs(events, s)
        assert len(diffs) == 3 * 60_000 // TICK_MS
        assert all(b.prev_final_id == a.final_id and b.first_id == a.final_id + 1 for a, b in pairwise(diffs))
        snap = snaps[s]
        tops, stats = reconstruct(
            [Snapshot(snap.last_update_id, snap.event_time, snap.bids, snap.asks)], diffs, START, START + 180_000
        )
        assert (stats.syncs, stats.breaks, stats.crossed, stats.snapshots_unusable) == (1, 0, 0, 0)
        assert stats.dropped_before_sync == sum(1 for d in diffs if d.final_id < snap.last_update_id)
        # The book rebuilt from the diffs is the exchange's own book at a later snapshot.
        ref = later[s]
        top = next(t for t in tops if t.last_update_id == ref.last_update_id)
        assert list(top.bids) == list(ref.bids[:20]) and list(top.asks) == list(ref.asks[:20])
        assert top.bids[0][0] < top.asks[0][0]


def test_book_tickers_carry_the_books_best_levels_and_its_update_id() -> None:
    path = BookPath(Market())
    events = list(
        generate_session(["SOLUSDT"], 1, start_ms=START, seed=2, rates=Rates(trades_per_s=1), market=Market())
    )
    depth = {e["data"]["u"]: e["data"] for e in events if e["data"]["e"] == "depthUpdate"}
    tickers = [e["data"] for e in events if e["data"]["e"] == "bookTicker"]
    assert len(tickers) == len(depth) == 240
    for t in tickers:
        assert t["u"] in depth  # the id of the depth update of the same tick
        bids, asks = path.book("SOLUSDT", t["u"] // 10)
        assert Decimal(t["b"]) == Decimal(max(bids)) / 100 and Decimal(t["a"]) == Decimal(min(asks)) / 100
        assert Decimal(t["b"]) < Decimal(t["a"])
