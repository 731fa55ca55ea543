"""Candle building end to end: real SecantusDB, real metadata store, fake exchange over HTTP."""

from __future__ import annotations

import pytest
from bson.decimal128 import Decimal128

from dm_assets.candles import build, gaps
from dm_assets.partitions import day_bounds_ms
from dm_resources.binance import BinanceClient, Kline
from dm_resources.candle_store import CandleStore
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from tests.fake_exchange import FakeExchange

DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)
NOW = END + 3_600_000  # the day is over
M = 60_000
SYMBOL = "BTCUSDT"


@pytest.fixture
def exchange_now_ms() -> int:
    return NOW


def _client(ex: FakeExchange) -> BinanceClient:
    return BinanceClient(ex.url, now_ms=lambda: NOW, sleep=lambda s: None)


def _ws_klines(ex: FakeExchange, minutes: list[int]) -> list[dict]:
    rows = {r[0]: r for r in ex.klines(SYMBOL, "1m", START, END)}
    return [Kline.from_row(rows[START + i * M]).to_document(SYMBOL, "1m", source="ws") for i in minutes]


def _candles(store: MongoStore, interval: str) -> list[dict]:
    return CandleStore(store).read_range(SYMBOL, interval, START, END)


def test_day_with_local_holes_completes_from_rest_and_rerun_changes_nothing(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange
) -> None:
    local = [i for i in range(1440) if not (100 <= i < 160 or 700 <= i < 705 or i == 1439)]
    mongo_store.insert_idempotent("klines", _ws_klines(exchange, local))

    first = build.build_1m_day(mongo_store, meta, _client(exchange), SYMBOL, DAY, now=NOW)
    assert first.rows == 1440 and first.missing == [] and first.confirmed_missing == []
    assert first.by_source == {"kline": len(local), "rest": 1440 - len(local)}
    candles = _candles(mongo_store, "1m")
    assert [c["open_time"] for c in candles] == [START + i * M for i in range(1440)]
    source = {(c["open_time"] - START) // M: c["source"] for c in candles}
    assert source[99] == "kline" and source[100] == "rest" and source[159] == "rest" and source[160] == "kline"
    assert source[1439] == "rest"
    # Three REST requests, one per contiguous hole, not one per minute.
    assert first.rest_requests == 3

    requests_before = len(exchange.log)
    second = build.build_1m_day(mongo_store, meta, _client(exchange), SYMBOL, DAY, now=NOW)
    assert (second.upserted, second.modified, second.rows) == (0, 0, 1440)
    assert second.by_source == first.by_source
    assert len(exchange.log) == requests_before  # REST fills were stored as raw klines: nothing asked again

    # Higher intervals equal the exchange's own klines for those intervals.
    for interval in ("5m", "15m", "1h", "4h", "1d"):
        out = build.build_higher_day(mongo_store, meta, SYMBOL, DAY, interval, now=NOW)
        assert out.missing == []
        ours = _candles(mongo_store, interval)
        theirs = [Kline.from_row(r) for r in exchange.klines(SYMBOL, interval, START, END)]
        assert len(ours) == len(theirs) > 0
        for c, k in zip(ours, theirs, strict=True):
            assert c["open_time"] == k.open_time and c["close_time"] == k.close_time
            for f in (
                "open",
                "high",
                "low",
                "close",
                "volume",
                "quote_volume",
                "taker_buy_volume",
                "taker_buy_quote_volume",
            ):
                assert c[f] == pytest.approx(float(getattr(k, f)), rel=1e-12), (interval, f, c["open_time"])
            assert c["trades"] == k.trades
        again = build.build_higher_day(mongo_store, meta, SYMBOL, DAY, interval, now=NOW)
        assert (again.upserted, again.modified) == (0, 0)


def _trade(agg_id: int, t: int, price: str, qty: str, buyer_is_maker: bool) -> dict:
    return {
        "_id": f"{SYMBOL}:{agg_id}",
        "symbol": SYMBOL,
        "agg_id": agg_id,
        "price": Decimal128(price),
        "qty": Decimal128(qty),
        "first_trade_id": agg_id * 2,
        "last_trade_id": agg_id * 2 + 1,
        "trade_time": t,
        "event_time": t + 1,
        "buyer_is_maker": buyer_is_maker,
    }


def test_trades_fill_minutes_they_prove_complete(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange
) -> None:
    # Klines everywhere except minutes 1000..1009; trades cover 999..1010 with consecutive ids,
    # minute 1005 has no trade (ids still consecutive across it), minute 1007 lost a trade.
    local = [i for i in range(1440) if not 1000 <= i < 1010]
    mongo_store.insert_idempotent("klines", _ws_klines(exchange, local))
    trades, agg = [], 5000
    for minute in range(999, 1011):
        if minute == 1005:
            continue
        for k in range(3):
            agg += 1
            if minute == 1007 and k == 1:
                continue  # a hole in the id sequence: minute 1007 cannot be proven complete
            trades.append(_trade(agg, START + minute * M + k * 10_000, f"{100 + minute % 7}.{k}5", "0.125", k == 2))
    mongo_store.insert_idempotent("agg_trades", trades)

    out = build.build_1m_day(mongo_store, meta, _client(exchange), SYMBOL, DAY, now=NOW)
    assert out.rows == 1440 and out.missing == []
    candles = {(c["open_time"] - START) // M: c for c in _candles(mongo_store, "1m")}
    assert {i for i, c in candles.items() if c["source"] == "agg_trades"} == {
        1000,
        1001,
        1002,
        1003,
        1004,
        1005,
        1006,
        1008,
        1009,
    }
    assert candles[1007]["source"] == "rest"
    m1000 = candles[1000]
    assert (m1000["open"], m1000["high"], m1000["low"], m1000["close"]) == (106.05, 106.25, 106.05, 106.25)
    assert m1000["volume"] == pytest.approx(0.375) and m1000["taker_buy_volume"] == pytest.approx(0.25)
    flat = candles[1005]  # no trades: flat at the previous close, zero volume
    assert flat["open"] == flat["close"] == candles[1004]["close"] and flat["volume"] == 0 and flat["trades"] == 0


def test_exchange_holes_are_confirmed_missing_after_bounded_attempts(
    mongo_store: MongoStore, meta: MetadataStore
) -> None:
    holes = {(SYMBOL, START + i * M) for i in range(600, 603)}
    with FakeExchange(now_ms=NOW, holes=holes) as ex:
        results = [
            build.build_1m_day(mongo_store, meta, _client(ex), SYMBOL, DAY, now=NOW, confirm_after=3) for _ in range(4)
        ]
        requests_after_confirm = len(ex.requests_to("/fapi/v1/klines"))
        gap, _ = gaps.partition_gap(mongo_store, meta, SYMBOL, DAY, NOW)
    assert [len(r.missing) for r in results] == [3, 3, 0, 0]
    assert [len(r.confirmed_missing) for r in results] == [0, 0, 3, 3]
    assert results[-1].rest_requests == 0  # confirmed holes are not asked for again
    assert results[-1].rows == 1437
    assert requests_after_confirm == results[0].rest_requests + 2  # 1 bulk fill + 2 retries of the hole
    assert gap.missing == 0  # the gap sensor stops asking


def test_rest_error_keeps_local_data_and_counts_no_attempt(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange
) -> None:
    mongo_store.insert_idempotent("klines", _ws_klines(exchange, list(range(0, 1000))))
    exchange.fail_next(418, retry_after=120)
    out = build.build_1m_day(mongo_store, meta, _client(exchange), SYMBOL, DAY, now=NOW)
    assert out.rest_error is not None and out.rest_error.startswith("BinanceBanned")
    assert out.rows == 1000 and len(out.missing) == 440
    assert meta.missing(SYMBOL, "1m", START, END - 1) == []  # an error is not evidence of a hole


def test_open_minute_is_not_built(mongo_store: MongoStore, meta: MetadataStore) -> None:
    now = START + 90 * M + 30_000  # 01:30:30 on the day
    with FakeExchange(now_ms=now) as ex:
        client = BinanceClient(ex.url, now_ms=lambda: now, sleep=lambda s: None)
        out = build.build_1m_day(mongo_store, meta, client, SYMBOL, DAY, now=now)
    assert out.expected == 90 and out.rows == 90
    assert max(c["open_time"] for c in _candles(mongo_store, "1m")) == START + 89 * M


def test_gap_sensor_logic_sees_missing_minutes(
    mongo_store: MongoStore, meta: MetadataStore, exchange: FakeExchange
) -> None:
    gap, times = gaps.partition_gap(mongo_store, meta, SYMBOL, DAY, NOW)
    assert gap.missing == 1440 and len(times) == 1440
    build.build_1m_day(mongo_store, meta, _client(exchange), SYMBOL, DAY, now=NOW)
    gap, _ = gaps.partition_gap(mongo_store, meta, SYMBOL, DAY, NOW)
    assert gap.missing == 0 and gap.higher_missing  # 1m done, 1d not derived yet
    build.build_higher_day(mongo_store, meta, SYMBOL, DAY, "1d", now=NOW)
    gap, _ = gaps.partition_gap(mongo_store, meta, SYMBOL, DAY, NOW)
    assert (gap.missing, gap.higher_missing) == (0, False)
