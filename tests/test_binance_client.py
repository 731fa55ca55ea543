"""BinanceClient against the fake exchange over real HTTP, plus the fake's own guarantees.

Every sleep goes through an injected recorder or a :class:`VirtualClock`, so retry
and weight-budget behaviour is exercised without the tests waiting for it.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

import pytest
import requests
from bson.decimal128 import Decimal128

from dm_resources.binance import (
    BinanceBanned,
    BinanceClient,
    BinanceError,
    BinanceProtocolError,
    BinanceRequestError,
    BinanceUnavailable,
    Kline,
    request_weight,
)
from dm_resources.intervals import (
    INTERVAL_MS,
    MINUTE_MS,
    VALID_INTERVALS,
    bucket_start,
    bucket_starts,
    close_time,
    interval_length_ms,
    max_buckets,
    next_bucket_start,
    validate_interval,
)
from tests.fake_exchange import FakeExchange, VirtualClock

SYM = "BTCUSDT"


def utc_ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)


# 2026-01-06 10:20:33.250 UTC: the middle of a minute, so one candle is open.
NOW = utc_ms(2026, 1, 6, 10, 20) + 33_250


class Sleeps(list[float]):
    """Records requested sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(exchange: FakeExchange, **kw: Any) -> tuple[BinanceClient, Sleeps]:
    sleeps = Sleeps()
    kw.setdefault("now_ms", lambda: NOW)
    kw.setdefault("sleep", sleeps)
    return BinanceClient(exchange.url, **kw), sleeps


@pytest.fixture
def exchange_now_ms() -> int:
    return NOW


def open_times(rows: list[Kline]) -> list[int]:
    return [k.open_time for k in rows]


def expected(exchange: FakeExchange, interval: str, start: int, end: int) -> list[Kline]:
    return [Kline.from_row(r) for r in exchange.klines(SYM, interval, start, end)]


# --------------------------------------------------------------------------- paging


def test_pages_without_gaps_or_overlaps(exchange: FakeExchange) -> None:
    client, _ = make_client(exchange, page_size=1000)
    start = utc_ms(2026, 1, 3, 7, 0)
    end = start + 3_456 * MINUTE_MS  # 4 pages: 1000, 1000, 1000, 456
    rows = client.fetch_klines(SYM, "1m", start, end)

    assert open_times(rows) == list(range(start, end, MINUTE_MS))
    assert rows == expected(exchange, "1m", start, end)
    calls = exchange.requests_to("/fapi/v1/klines")
    assert len(calls) == 4
    # Each page starts 1 ms after the previous page's last open_time.
    assert [int(c["startTime"]) for c in calls] == [start] + [
        start + (1000 * i - 1) * MINUTE_MS + 1 for i in range(1, 4)
    ]
    # Binance's endTime is inclusive; ours is exclusive.
    assert {int(c["endTime"]) for c in calls} == {end - 1}
    # The last page asks only for what can exist: cheaper weight.
    assert [int(c["limit"]) for c in calls] == [1000, 1000, 1000, 456]
    assert client.stats.pages == 4 and client.stats.rows == 3_456


def test_next_page_starts_one_ms_after_last_open_time(exchange: FakeExchange) -> None:
    client, _ = make_client(exchange, page_size=100)
    start = utc_ms(2026, 1, 5, 0, 0)
    rows = client.fetch_klines(SYM, "1m", start, start + 250 * MINUTE_MS)
    calls = exchange.requests_to("/fapi/v1/klines")
    assert [int(c["startTime"]) for c in calls] == [start, rows[99].open_time + 1, rows[199].open_time + 1]
    assert len(rows) == 250 and len(set(open_times(rows))) == 250


def test_unaligned_range_and_higher_interval(exchange: FakeExchange) -> None:
    client, _ = make_client(exchange, page_size=10)
    start = utc_ms(2026, 1, 4, 3, 17) + 123  # inside the 03:15 5m bucket
    end = utc_ms(2026, 1, 4, 7, 2)
    rows = client.fetch_klines(SYM, "5m", start, end)
    first = bucket_start(start, "5m") + INTERVAL_MS["5m"]
    assert open_times(rows) == list(range(first, end, INTERVAL_MS["5m"]))
    assert rows == expected(exchange, "5m", start, end)
    assert all(k.close_time == k.open_time + INTERVAL_MS["5m"] - 1 for k in rows)


def test_empty_and_reversed_ranges_send_nothing(exchange: FakeExchange) -> None:
    client, _ = make_client(exchange)
    assert client.fetch_klines(SYM, "1m", NOW - MINUTE_MS * 10, NOW - MINUTE_MS * 10) == []
    assert client.fetch_klines(SYM, "1m", NOW, NOW - MINUTE_MS) == []
    assert exchange.log == []


def test_invalid_interval_and_page_size_are_refused_locally(exchange: FakeExchange) -> None:
    client, _ = make_client(exchange)
    with pytest.raises(ValueError, match="1s exists on spot only"):
        client.fetch_klines(SYM, "1s", NOW - 60_000, NOW)
    with pytest.raises(ValueError, match="page_size"):
        BinanceClient(exchange.url, page_size=1501)
    assert exchange.log == []


# --------------------------------------------------------------------------- open candle


def test_drops_the_still_open_candle(exchange: FakeExchange) -> None:
    client, _ = make_client(exchange)
    current = bucket_start(NOW, "1m")
    start = current - 30 * MINUTE_MS
    # The exchange does serve the open candle (close_time >= now) ...
    served = exchange.klines(SYM, "1m", start, NOW + 10 * MINUTE_MS, include_open=True)
    assert served[-1][0] == current and served[-1][6] >= NOW
    # ... and the client does not return it.
    rows = client.fetch_klines(SYM, "1m", start, NOW + 10 * MINUTE_MS)
    assert open_times(rows) == list(range(start, current, MINUTE_MS))
    assert client.stats.open_dropped == 1


def test_open_candle_of_a_higher_interval_is_dropped(exchange: FakeExchange) -> None:
    client, _ = make_client(exchange)
    start = bucket_start(NOW, "1h") - 5 * INTERVAL_MS["1h"]
    rows = client.fetch_klines(SYM, "1h", start, NOW + INTERVAL_MS["1h"])
    assert open_times(rows) == list(range(start, bucket_start(NOW, "1h"), INTERVAL_MS["1h"]))


def test_candle_closed_within_the_margin_waits_for_the_next_run(exchange: FakeExchange) -> None:
    just_after = bucket_start(NOW, "1m") + 400  # previous minute closed 401 ms ago
    exchange.now_ms = just_after
    prev = bucket_start(NOW, "1m") - MINUTE_MS
    careful, _ = make_client(exchange, now_ms=lambda: just_after)  # default margin 1000 ms
    assert open_times(careful.fetch_klines(SYM, "1m", prev - MINUTE_MS, NOW)) == [prev - MINUTE_MS]
    exact, _ = make_client(exchange, now_ms=lambda: just_after, closed_margin_ms=0)
    assert open_times(exact.fetch_klines(SYM, "1m", prev - MINUTE_MS, NOW)) == [prev - MINUTE_MS, prev]


# --------------------------------------------------------------------------- failures


def test_429_honours_retry_after_and_data_still_arrives(exchange: FakeExchange) -> None:
    client, sleeps = make_client(exchange)
    start = utc_ms(2026, 1, 2, 0, 0)
    exchange.fail_next(429, retry_after=7)
    rows = client.fetch_klines(SYM, "1m", start, start + 90 * MINUTE_MS)
    assert sleeps == [7.0]
    assert rows == expected(exchange, "1m", start, start + 90 * MINUTE_MS)
    assert client.stats.rate_limited == 1 and client.stats.retries == 1
    assert len(exchange.requests_to("/fapi/v1/klines")) == 2


def test_429_without_retry_after_waits_for_the_next_minute(exchange: FakeExchange) -> None:
    clock = VirtualClock(NOW)
    client, _ = make_client(exchange, now_ms=clock.now_ms, sleep=clock.sleep, weight_window_margin_s=0.0)
    exchange.fail_next(429)
    assert client.server_time() == NOW
    assert clock.sleeps == [(bucket_start(NOW, "1m") + MINUTE_MS - NOW) / 1000]


def test_429_retries_are_bounded(exchange: FakeExchange) -> None:
    client, sleeps = make_client(exchange, max_retries=2)
    exchange.fail_next(429, count=5, retry_after=1)
    with pytest.raises(BinanceUnavailable, match="429") as err:
        client.fetch_klines(SYM, "1m", NOW - 60 * MINUTE_MS, NOW)
    assert err.value.attempts == 3 and sleeps == [1.0, 1.0]


def test_excessive_retry_after_gives_up_instead_of_blocking(exchange: FakeExchange) -> None:
    client, sleeps = make_client(exchange, max_retry_after_s=60)
    exchange.fail_next(429, retry_after=900)
    with pytest.raises(BinanceUnavailable, match="Retry-After 900"):
        client.server_time()
    assert sleeps == []


def test_418_stops_at_once(exchange: FakeExchange) -> None:
    client, sleeps = make_client(exchange, page_size=100)
    exchange.fail_next(418, retry_after=3600)
    with pytest.raises(BinanceBanned, match="418") as err:
        client.fetch_klines(SYM, "1m", NOW - 500 * MINUTE_MS, NOW)
    assert err.value.retry_after_s == 3600
    assert "Retry-After 3600" in str(err.value) and "IP banned" in str(err.value)
    assert len(exchange.log) == 1 and sleeps == []
    assert isinstance(err.value, BinanceError)


def test_no_request_is_sent_while_banned(exchange: FakeExchange) -> None:
    clock = VirtualClock(NOW)
    client, _ = make_client(exchange, now_ms=clock.now_ms)
    exchange.fail_next(418, retry_after=120)
    with pytest.raises(BinanceBanned):
        client.server_time()
    clock.advance(60_000)
    with pytest.raises(BinanceBanned, match="still banned") as err:  # the next symbol in a loop
        client.fetch_klines(SYM, "1m", NOW - 60 * MINUTE_MS, NOW)
    assert err.value.retry_after_s == 60
    assert len(exchange.log) == 1
    clock.advance(60_000)  # the ban is over
    assert client.banned_until_ms is None
    assert client.server_time() == NOW and len(exchange.log) == 2


def test_5xx_retries_with_backoff_then_succeeds(exchange: FakeExchange) -> None:
    client, sleeps = make_client(exchange, backoff_initial_s=0.5)
    start = utc_ms(2026, 1, 2, 12, 0)
    exchange.fail_next(503)
    exchange.fail_next(502)
    exchange.fail_next(500)
    rows = client.fetch_klines(SYM, "1m", start, start + 10 * MINUTE_MS)
    assert rows == expected(exchange, "1m", start, start + 10 * MINUTE_MS)
    assert client.stats.retries == 3 and client.stats.server_errors == 3
    assert len(sleeps) == 3
    # Exponential (plus up to `initial` of jitter): 0.5, 1, 2.
    for i, s in enumerate(sleeps):
        assert 0.5 * 2**i <= s <= 0.5 * 2**i + 0.5


def test_5xx_gives_up_after_the_bound(exchange: FakeExchange) -> None:
    client, sleeps = make_client(exchange, max_retries=3)
    exchange.fail_next(500, count=10)
    with pytest.raises(BinanceUnavailable, match="after 4 attempt") as err:
        client.fetch_klines(SYM, "1m", NOW - 60 * MINUTE_MS, NOW)
    assert "HTTP 500" in err.value.reason
    assert len(exchange.requests_to("/fapi/v1/klines")) == 4 and len(sleeps) == 3


def test_connection_drop_and_timeout_are_retried(exchange: FakeExchange) -> None:
    client, sleeps = make_client(exchange, timeout=0.3)
    start = utc_ms(2026, 1, 1, 0, 0)
    exchange.drop_next()
    exchange.delay_next(1.0)
    rows = client.fetch_klines(SYM, "1m", start, start + 5 * MINUTE_MS)
    assert rows == expected(exchange, "1m", start, start + 5 * MINUTE_MS)
    assert client.stats.network_errors == 2 and len(sleeps) == 2


def test_connection_refused_becomes_unavailable() -> None:
    ex = FakeExchange().start()
    url = ex.url
    ex.stop()  # nothing listens on the port any more
    sleeps = Sleeps()
    client = BinanceClient(url, max_retries=1, sleep=sleeps, timeout=2)
    with pytest.raises(BinanceUnavailable, match="ConnectionError"):
        client.server_time()
    assert len(sleeps) == 1


def test_invalid_symbol_is_a_request_error_with_binances_message(exchange: FakeExchange) -> None:
    client, sleeps = make_client(exchange)
    with pytest.raises(BinanceRequestError, match="Invalid symbol") as err:
        client.fetch_klines("NOPEUSDT", "1m", NOW - 60 * MINUTE_MS, NOW)
    assert err.value.status == 400 and err.value.code == -1121 and err.value.msg == "Invalid symbol."
    assert len(exchange.log) == 1 and sleeps == []


# --------------------------------------------------------------------------- weight


def test_weight_budget_sleeps_to_the_next_minute(exchange: FakeExchange) -> None:
    clock = VirtualClock(NOW)
    exchange.now_ms = clock.now_ms
    exchange.weight_limit = 25  # the fake answers 429 past this: the client must never get there
    client = BinanceClient(
        exchange.url,
        weight_limit=25,
        weight_safety=0.9,
        page_size=1000,
        now_ms=clock.now_ms,
        sleep=clock.sleep,
        weight_window_margin_s=0.0,
    )
    start = utc_ms(2026, 1, 1, 0, 0)
    end = start + 6_000 * MINUTE_MS  # 6 pages of weight 5; budget 22.5 per minute allows 4
    rows = client.fetch_klines(SYM, "1m", start, end)

    assert open_times(rows) == list(range(start, end, MINUTE_MS))
    assert client.stats.weight_waits == 1 and client.stats.rate_limited == 0
    assert clock.sleeps == [(bucket_start(NOW, "1m") + MINUTE_MS - NOW) / 1000]
    assert client.used_weight == 10  # two pages in the new minute, as the header reported


def test_weight_used_by_others_is_read_from_the_header(exchange: FakeExchange) -> None:
    clock = VirtualClock(NOW)
    exchange.now_ms = clock.now_ms
    exchange.weight_limit = 25
    for _ in range(4):  # another process on the same IP spends 20 of the 25
        requests.get(
            exchange.url + "/fapi/v1/klines", params={"symbol": SYM, "interval": "1m", "limit": 1000}, timeout=5
        ).raise_for_status()
    client = BinanceClient(exchange.url, weight_limit=25, page_size=100, now_ms=clock.now_ms, sleep=clock.sleep)
    client.fetch_klines(SYM, "1m", NOW - 300 * MINUTE_MS, NOW - 100 * MINUTE_MS)  # 2 pages of weight 2
    assert client.stats.weight_waits == 1 and client.stats.rate_limited == 0
    assert client.counters()["weight_waits"] == 1


def test_request_weight_table() -> None:
    assert [request_weight(n) for n in (1, 99, 100, 499, 500, 1000, 1001, 1500)] == [1, 1, 2, 2, 5, 5, 10, 10]


# --------------------------------------------------------------------------- holes, decimals, helpers


def test_exchange_holes_come_back_as_absent_rows(exchange: FakeExchange) -> None:
    start = utc_ms(2026, 1, 3, 0, 0)
    end = start + 400 * MINUTE_MS
    outage = set(range(start + 90 * MINUTE_MS, start + 260 * MINUTE_MS, MINUTE_MS))  # across page ends
    lone = {start, end - MINUTE_MS}
    exchange.holes = {(SYM, t) for t in outage | lone} | {("ETHUSDT", start + MINUTE_MS)}
    client, _ = make_client(exchange, page_size=100)
    rows = client.fetch_klines(SYM, "1m", start, end)
    assert open_times(rows) == sorted(set(range(start, end, MINUTE_MS)) - outage - lone)
    eth = make_client(exchange)[0].fetch_klines("ETHUSDT", "1m", start, start + 3 * MINUTE_MS)
    assert open_times(eth) == [start, start + 2 * MINUTE_MS]


def test_decimals_are_exact(exchange: FakeExchange) -> None:
    client, _ = make_client(exchange)
    start = utc_ms(2026, 1, 2, 3, 4)
    rows = client.fetch_klines(SYM, "1m", start, start + 20 * MINUTE_MS)
    raw = exchange.klines(SYM, "1m", start, start + 20 * MINUTE_MS)
    for k, r in zip(rows, raw, strict=True):
        assert [str(k.open), str(k.high), str(k.low), str(k.close), str(k.volume)] == r[1:6]
        assert [str(k.quote_volume), str(k.taker_buy_volume)] == [r[7], r[9]]
        assert str(k.taker_buy_quote_volume) == r[10]
        assert k.trades == r[8] and k.close_time == r[6]


def test_kline_row_parsing_keeps_every_digit_and_refuses_floats() -> None:
    row = [
        1767225600000,
        "0.00012345",
        "0.00012400",
        "0.00012300",
        "0.00012399",
        "123456789.123456789",
        1767225659999,
        "15234.567890123456789012345678901",
        42,
        "0.1",
        "0.00000000001",
        "0",
        "future-field",
    ]
    k = Kline.from_row(row)
    assert k.quote_volume == Decimal("15234.567890123456789012345678901")
    doc = k.to_document(SYM, "1m")
    assert doc["_id"] == f"{SYM}:1m:1767225600000"
    assert doc["source"] == "rest" and doc["interval"] == "1m" and doc["symbol"] == SYM
    assert doc["open_time"] == 1767225600000 and doc["close_time"] == 1767225659999 and doc["trades"] == 42
    assert isinstance(doc["open"], Decimal128) and str(doc["open"].to_decimal()) == "0.00012345"
    assert str(doc["quote_volume"]) == "15234.567890123456789012345678901"
    assert str(doc["close"]) == "0.00012399" and str(doc["taker_buy_quote_volume"]) == "1E-11"
    for bad in (1.5, None, "abc", "NaN"):
        with pytest.raises(BinanceProtocolError):
            Kline.from_row([*row[:4], bad, *row[5:]])
    with pytest.raises(BinanceProtocolError):
        Kline.from_row(row[:10])
    with pytest.raises(ValueError, match="upper case"):
        k.to_document("btcusdt", "1m")


def test_server_time_and_trading_symbols(exchange: FakeExchange) -> None:
    exchange.statuses = {"OLDUSDT": "SETTLING"}
    client, _ = make_client(exchange)
    assert client.server_time() == NOW
    assert client.exchange_symbols() == exchange.symbols
    assert "OLDUSDT" not in client.exchange_symbols(contract_type="PERPETUAL")
    assert client.exchange_symbols(contract_type="CURRENT_QUARTER") == []


# --------------------------------------------------------------------------- intervals


def test_bucket_start_week_is_monday_utc() -> None:
    thursday = utc_ms(2026, 1, 1, 13, 45)
    assert bucket_start(thursday, "1w") == utc_ms(2025, 12, 29)
    monday = utc_ms(2025, 12, 29)
    assert bucket_start(monday, "1w") == monday and bucket_start(monday - 1, "1w") == utc_ms(2025, 12, 22)
    assert dt.datetime.fromtimestamp(bucket_start(NOW, "1w") / 1000, dt.UTC).weekday() == 0
    assert next_bucket_start(monday, "1w") == utc_ms(2026, 1, 5)
    assert close_time(monday, "1w") == utc_ms(2026, 1, 5) - 1
    assert interval_length_ms("1w") == 7 * 86_400_000 and "1w" not in INTERVAL_MS


def test_bucket_start_month_follows_the_calendar() -> None:
    assert bucket_start(utc_ms(2024, 2, 29, 23, 59), "1M") == utc_ms(2024, 2, 1)
    assert next_bucket_start(utc_ms(2024, 2, 1), "1M") == utc_ms(2024, 3, 1)
    assert next_bucket_start(utc_ms(2025, 12, 31, 8), "1M") == utc_ms(2026, 1, 1)
    assert close_time(utc_ms(2026, 1, 1), "1M") == utc_ms(2026, 2, 1) - 1
    starts = list(bucket_starts(utc_ms(2025, 11, 15), utc_ms(2026, 3, 1), "1M"))
    assert starts == [utc_ms(2025, 12, 1), utc_ms(2026, 1, 1), utc_ms(2026, 2, 1)]
    assert max_buckets(utc_ms(2025, 11, 15), utc_ms(2026, 3, 1), "1M") >= len(starts)
    with pytest.raises(ValueError, match="no fixed length"):
        interval_length_ms("1M")


def test_fixed_intervals_are_epoch_aligned_and_counted_exactly() -> None:
    for interval, ms in INTERVAL_MS.items():
        assert bucket_start(NOW, interval) == NOW - NOW % ms
        start, end = NOW - 7 * ms - 5, NOW + 3 * ms
        assert max_buckets(start, end, interval) == len(list(bucket_starts(start, end, interval)))


def test_validate_interval_names_the_valid_ones() -> None:
    assert [validate_interval(i) for i in VALID_INTERVALS] == list(VALID_INTERVALS)
    for bad in ("1s", "2m", "1H", "1y", ""):
        with pytest.raises(ValueError, match="valid intervals: 1m, 3m, 5m") as err:
            validate_interval(bad)
        assert "1M" in str(err.value)


# --------------------------------------------------------------------------- the fake itself


def _aggregate(minutes: list[list[Any]]) -> list[Any]:
    """Independent Decimal aggregation of 1m rows (the test's own, not the fake's numpy path)."""
    return [
        minutes[0][1],
        max(Decimal(m[2]) for m in minutes),
        min(Decimal(m[3]) for m in minutes),
        minutes[-1][4],
        sum(Decimal(m[5]) for m in minutes),
        sum(Decimal(m[7]) for m in minutes),
        sum(m[8] for m in minutes),
        sum(Decimal(m[9]) for m in minutes),
        sum(Decimal(m[10]) for m in minutes),
    ]


def _numbers(row: list[Any]) -> list[Any]:
    return [
        row[1],
        Decimal(row[2]),
        Decimal(row[3]),
        row[4],
        Decimal(row[5]),
        Decimal(row[7]),
        row[8],
        Decimal(row[9]),
        Decimal(row[10]),
    ]


@pytest.mark.parametrize(
    "interval", ["3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"]
)
def test_fake_higher_intervals_aggregate_the_1m_klines(exchange: FakeExchange, interval: str) -> None:
    exchange.now_ms = utc_ms(2026, 4, 2, 5, 7) + 11  # several whole months, weeks and 3d buckets before it
    span = {"1w": 3, "1M": 2, "3d": 4}.get(interval, 3)
    start = bucket_start(utc_ms(2026, 1, 10, 0, 0), interval)
    end = start
    for _ in range(span):
        end = next_bucket_start(end, interval)
    hole_a, hole_b = start + 7 * MINUTE_MS, end - MINUTE_MS  # holes are skipped, not zero-filled
    exchange.holes = {(SYM, hole_a), (SYM, hole_b)}

    client, _ = make_client(exchange, now_ms=lambda: exchange.now_ms)
    higher = client.fetch_klines(SYM, interval, start, end)
    minutes = exchange.klines(SYM, "1m", start, end)
    assert len(minutes) == (end - start) // MINUTE_MS - 2

    assert open_times(higher) == list(bucket_starts(start, end, interval))
    minute_opens = [m[0] for m in minutes]
    for k in higher:
        lo = bisect.bisect_left(minute_opens, k.open_time)
        inside = minutes[lo : bisect.bisect_left(minute_opens, next_bucket_start(k.open_time, interval))]
        raw = next(r for r in exchange.klines(SYM, interval, k.open_time, k.open_time + 1))
        assert _numbers(raw) == _aggregate(inside)
        assert k.close_time == close_time(k.open_time, interval)


def test_fake_minutes_are_continuous_and_sane(exchange: FakeExchange) -> None:
    start = utc_ms(2026, 1, 4, 22, 0)
    rows = exchange.klines(SYM, "1m", start, start + 240 * MINUTE_MS)  # crosses midnight
    for prev, cur in itertools.pairwise(rows):
        assert cur[1] == prev[4]  # open == previous close
    for r in rows:
        o, h, lo, c = (Decimal(x) for x in r[1:5])
        assert lo <= min(o, c) <= max(o, c) <= h and lo > 0
        assert Decimal(r[9]) <= Decimal(r[5]) and r[8] >= 1
    assert exchange.klines(SYM, "1m", start, start + MINUTE_MS) == rows[:1]  # deterministic
    assert FakeExchange(now_ms=NOW).klines("ETHUSDT", "1m", start, start + 5 * MINUTE_MS) != rows[:5]


def test_fake_paging_rules(exchange: FakeExchange) -> None:
    def get(**params: Any) -> requests.Response:
        return requests.get(
            exchange.url + "/fapi/v1/klines", params={"symbol": SYM, "interval": "1m", **params}, timeout=5
        )

    start = utc_ms(2026, 1, 5, 0, 0)
    body = get(startTime=start, endTime=start + 3 * MINUTE_MS).json()
    assert [r[0] for r in body] == [start + i * MINUTE_MS for i in range(4)]  # both ends inclusive
    assert len(get(startTime=start).json()) == 500  # default limit
    latest = get(limit=3).json()
    assert latest[-1][0] == bucket_start(NOW, "1m") and latest[-1][6] >= NOW  # newest is the open candle
    assert [r[0] for r in get(endTime=start, limit=2).json()] == [start - MINUTE_MS, start]
    assert get(startTime=NOW + MINUTE_MS).json() == []  # nothing from the future

    too_many = get(limit=1501)
    assert too_many.status_code == 400 and too_many.json()["code"] == -1130
    bad = requests.get(exchange.url + "/fapi/v1/klines", params={"symbol": "XXX", "interval": "1m"}, timeout=5)
    assert bad.status_code == 400 and bad.json() == {"code": -1121, "msg": "Invalid symbol."}
    assert get(startTime=start + 1, endTime=start).json()["code"] == -1023


def test_fake_weight_header_accumulates_per_minute(exchange: FakeExchange) -> None:
    clock = VirtualClock(NOW)
    exchange.now_ms = clock.now_ms
    seen = []
    for limit in (50, 200, 700, 1200):
        r = requests.get(
            exchange.url + "/fapi/v1/klines", params={"symbol": SYM, "interval": "1m", "limit": limit}, timeout=5
        )
        seen.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
    assert seen == [1, 3, 8, 18]
    clock.advance(MINUTE_MS)
    r = requests.get(exchange.url + "/fapi/v1/time", timeout=5)
    assert r.headers["X-MBX-USED-WEIGHT-1M"] == "1"
    assert [p for p, _ in exchange.log] == ["/fapi/v1/klines"] * 4 + ["/fapi/v1/time"]
