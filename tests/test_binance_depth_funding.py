"""Depth snapshots and funding history from the fake exchange over real HTTP: paging, weights, limits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

import pytest

from dm_resources.binance import BinanceClient, BinanceRequestError, depth_weight
from tests.fake_exchange import FakeExchange, VirtualClock

H = 3_600_000
T0 = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
NOW = T0 + 120 * 24 * H


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(NOW)


@pytest.fixture
def exchange(clock: VirtualClock) -> Iterator[FakeExchange]:
    ex = FakeExchange(now_ms=clock.now_ms).start()
    yield ex
    ex.stop()


def _client(ex: FakeExchange, clock: VirtualClock, **kw: object) -> BinanceClient:
    return BinanceClient(ex.url, now_ms=clock.now_ms, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


def test_depth_weight_follows_binance_table() -> None:
    assert [depth_weight(n) for n in (5, 10, 20, 50, 100, 500, 1000)] == [2, 2, 2, 2, 5, 10, 20]
    with pytest.raises(ValueError):
        depth_weight(200)


def test_fetch_depth_parses_exact_levels_and_counts_its_weight(exchange: FakeExchange, clock: VirtualClock) -> None:
    bids = [[f"{100 - i}.10", "1.500"] for i in range(30)]
    asks = [[f"{101 + i}.10", "0.250"] for i in range(30)]
    exchange.set_depth("BTCUSDT", {"lastUpdateId": 777, "E": NOW - 5, "T": NOW - 7, "bids": bids, "asks": asks})
    client = _client(exchange, clock)
    snap = client.fetch_depth("BTCUSDT", limit=1000)
    assert snap.last_update_id == 777 and snap.event_time == NOW - 5 and snap.transaction_time == NOW - 7
    assert snap.bids[0] == (Decimal("100.10"), Decimal("1.500")) and len(snap.asks) == 30
    assert client.used_weight == 20 == exchange.used_weight
    client.fetch_depth("BTCUSDT", limit=20)
    assert client.used_weight == 22
    assert exchange.requests_to("/fapi/v1/depth")[-1]["limit"] == "20"
    doc = snap.to_document(fetched_at=NOW)
    assert doc["_id"] == "BTCUSDT:777" and doc["snapshot_time"] == NOW - 5 and len(doc["bids"]) == 30
    with pytest.raises(BinanceRequestError):
        client.fetch_depth("NOPEUSDT", limit=5)


def test_funding_history_pages_by_time_across_interval_changes(exchange: FakeExchange, clock: VirtualClock) -> None:
    # 8h until day 30, then 4h, then 1h from day 60: 90 + 180 + 60*24 = 1710 events in 120 days.
    day = 24 * H
    exchange.set_funding_schedule("ETHUSDT", [(T0 - 30 * day, 8 * H), (T0 + 30 * day, 4 * H), (T0 + 60 * day, H)])
    client = _client(exchange, clock)
    rows = client.fetch_funding_rates("ETHUSDT", T0, NOW)
    expected = [r for r in exchange.funding_events("ETHUSDT", T0 - 10, NOW) if T0 <= r["fundingTime"] < NOW]
    assert len(rows) == len(expected) == 90 + 180 + 60 * 24
    assert [r.funding_time for r in rows] == [r["fundingTime"] for r in expected]
    assert [r.funding_rate for r in rows] == [Decimal(r["fundingRate"]) for r in expected]
    # Two pages of 1000, the second short: paging stops without an empty third request.
    reqs = exchange.requests_to("/fapi/v1/fundingRate")
    assert len(reqs) == 2 == client.funding_stats.pages
    assert reqs[0]["limit"] == "1000" and int(reqs[1]["startTime"]) == rows[999].funding_time + 1
    # No IP weight: the funding endpoint has its own request budget.
    assert client.used_weight == 0
    # Stored documents snap the few-ms jitter of fundingTime to the second, keeping the raw value.
    doc = rows[0].to_document()
    assert doc["funding_time"] % 1000 == 0 and abs(doc["funding_time_raw"] - doc["funding_time"]) < 10
    assert doc["_id"] == f"ETHUSDT:{doc['funding_time']}" and doc["source"] == "rest"


def test_funding_budget_waits_instead_of_collecting_429s(exchange: FakeExchange, clock: VirtualClock) -> None:
    exchange.funding_limit = 3  # the exchange answers 429 past 3 requests per 5 minutes
    exchange.set_funding_schedule("BTCUSDT", [(T0 - 24 * H, H)])
    client = _client(exchange, clock, funding_limit=3, funding_safety=1.0)
    rows = client.fetch_funding_rates("BTCUSDT", T0, T0 + 100 * H, page_size=10)
    assert len(rows) == 100
    assert client.funding_stats.requests == 11  # 10 full pages and a short one
    assert client.funding_stats.window_waits >= 3  # 11 requests at 3 per 5 min
    assert client.stats.rate_limited == 0  # never a 429
    assert clock.now_ms() - NOW >= 3 * 300_000


def test_funding_without_budget_gets_429_and_retries_after(exchange: FakeExchange, clock: VirtualClock) -> None:
    exchange.funding_limit = 1
    exchange.set_funding_schedule("BTCUSDT", [(T0 - 24 * H, H)])
    client = _client(exchange, clock, funding_limit=500)
    rows = client.fetch_funding_rates("BTCUSDT", T0, T0 + 20 * H, page_size=10)
    assert len(rows) == 20
    assert client.stats.rate_limited >= 1  # the exchange's own limit, honoured through Retry-After
