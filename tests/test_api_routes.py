"""Every API route over real HTTP (uvicorn on loopback) against SecantusDB and SQLite holding data."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson.decimal128 import Decimal128

from api.app import create_app
from api.deps import ApiSettings
from api.models import (
    AnalyticsPage,
    BackfillJobList,
    BackfillJobView,
    Candle,
    CandlesPage,
    DatasetRecord,
    DatasetSchema,
    DepthPage,
    ErrorResponse,
    FundingPage,
    HealthSummary,
    LineageResponse,
    PairHealth,
    Readiness,
    TradesPage,
)
from api.testing import serve
from dm_resources.candle_store import CandleStore
from dm_resources.embedded import free_port
from dm_resources.metadata.schemas import DatasetIn, HealthMetricIn, LineageEdge, SchemaField
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import Settings, load_settings

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
TOKEN = "s3cret-token"
PRICE = "27123.123456789012345678"  # 24 significant digits: a float would lose 9 of them


def _day0() -> int:
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int(today.timestamp() * 1000) - 2 * DAY


def candle_docs(symbol: str, interval: str, step: int, start: int, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        t = start + i * step
        base = 100.0 + (i % 97) * 0.25
        out.append(
            {
                "_id": f"{symbol}:{interval}:{t}",
                "symbol": symbol,
                "interval": interval,
                "open_time": t,
                "close_time": t + step - 1,
                "open": base,
                "high": base + 1.5,
                "low": base - 1.25,
                "close": base + 0.5,
                "volume": 10.0 + i,
                "quote_volume": 1000.0 + i,
                "taker_buy_volume": 4.0,
                "taker_buy_quote_volume": 400.0,
                "trades": 7 + i % 5,
                "source": "kline",
                "flags": ["bad_print", "verified"] if i == n - 1 else [],
            }
        )
    return out


def put_candles(store: MongoStore, docs: list[dict[str, Any]]) -> None:
    """Candles go into day buckets, as the candle assets write them."""
    first, last = docs[0], docs[-1]
    CandleStore(store).sync_range(first["symbol"], first["interval"], first["open_time"], last["open_time"] + 1, docs)


@dataclass
class Seeded:
    store: MongoStore
    meta: MetadataStore
    settings: Settings
    day0: int


def seed_mongo(store: MongoStore, day0: int) -> None:
    put_candles(store, candle_docs("BTCUSDT", "1m", MIN, day0, 2 * 1440))
    put_candles(store, candle_docs("ETHUSDT", "1m", MIN, day0, 600))
    put_candles(store, candle_docs("BTCUSDT", "1h", HOUR, day0, 48))
    put_candles(store, candle_docs("SOLUSDT", "1m", MIN, day0, 5))  # in the store, not configured
    # Three trades share each millisecond: paging must break ties on agg_id.
    trades = [
        {
            "_id": f"BTCUSDT:{1000 + i}",
            "symbol": "BTCUSDT",
            "agg_id": 1000 + i,
            "price": Decimal128(PRICE),
            "qty": Decimal128("0.00100000"),
            "first_trade_id": 5000 + i,
            "last_trade_id": 5000 + i,
            "trade_time": day0 + (i // 3) * 1000,
            "event_time": day0 + (i // 3) * 1000 + 3,
            "buyer_is_maker": i % 2 == 0,
        }
        for i in range(30)
    ]
    store.insert_idempotent("agg_trades", trades)
    depth = [
        {
            "_id": f"BTCUSDT:{900 + i}",
            "symbol": "BTCUSDT",
            "event_time": day0 + i * 250,
            "transaction_time": day0 + i * 250 - 1,
            "first_update_id": 800 + i,
            "final_update_id": 900 + i,
            "prev_final_update_id": 899 + i,
            "bids": [[Decimal128("27000.10"), Decimal128("1.500")]],
            "asks": [[Decimal128("27000.20"), Decimal128("0.250")]],
        }
        for i in range(12)
    ]
    store.insert_idempotent("depth_updates", depth)
    funding = [
        {
            "_id": f"BTCUSDT:{day0 + i * 8 * HOUR}",
            "symbol": "BTCUSDT",
            "funding_time": day0 + i * 8 * HOUR,
            "funding_rate": Decimal128("0.00010000"),
            "mark_price": Decimal128("27000.5"),
            "event_time": day0 + i * 8 * HOUR - 1000,
        }
        for i in range(6)
    ]
    store.insert_idempotent("funding_rates", funding)
    marks = [
        {
            "_id": f"BTCUSDT:{day0 + i * 1000}",
            "symbol": "BTCUSDT",
            "event_time": day0 + i * 1000,
            "mark_price": Decimal128("27000.5"),
            "index_price": Decimal128("27001.1"),
            "estimated_settle_price": Decimal128("27000.9"),
            "funding_rate": Decimal128("0.00010000"),
            "next_funding_time": day0 + 8 * HOUR,
        }
        for i in range(10)
    ]
    store.insert_idempotent("mark_prices", marks)
    analytics = [
        {
            "_id": f"BTCUSDT:volatility:1m:{day0 + i * 15 * MIN}",
            "symbol": "BTCUSDT",
            "kind": "volatility",
            "interval": "1m",
            "window_end": day0 + i * 15 * MIN,
            "values": {
                "realized_vol": 0.5 + i,
                "bars": 60,
                "insufficient_data": False,
                "gk": None,
                "by_window": {"60": 0.1 * i},
            },
            "computed_at": dt.datetime(2026, 3, 10, tzinfo=dt.UTC),
        }
        for i in range(4)
    ]
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    analytics.append(
        {
            "_id": f"*:correlation:1m:{day0}",
            "symbol": "*",
            "kind": "correlation",
            "interval": "1m",
            "window_end": day0,
            "values": {
                "windows": [
                    {
                        "window": 60,
                        "symbols": syms,
                        "matrix": [[1.0, 0.8, 0.1], [0.8, 1.0, 0.2], [0.1, 0.2, 1.0]],
                        "graph": {"nodes": syms, "edges": [{"source": "BTCUSDT", "target": "ETHUSDT", "weight": 0.8}]},
                    }
                ]
            },
        }
    )
    store.insert_idempotent("analytics", analytics)


def seed_meta(meta: MetadataStore, day0: int) -> None:
    d0 = dt.datetime.fromtimestamp(day0 / 1000, tz=dt.UTC).date()
    meta.upsert_health(
        [
            HealthMetricIn(
                symbol="BTCUSDT", interval="1m", day=d0, completeness=100, freshness=90, consistency=100, score=97
            ),
            HealthMetricIn(
                symbol="BTCUSDT",
                interval="1m",
                day=d0 + dt.timedelta(days=1),
                completeness=99,
                freshness=95,
                consistency=100,
                score=98,
            ),
            HealthMetricIn(
                symbol="ETHUSDT", interval="1m", day=d0, completeness=50, freshness=10, consistency=90, score=40
            ),
        ]
    )
    meta.upsert_datasets(
        [
            DatasetIn(
                kind="candles",
                symbol="BTCUSDT",
                interval="1m",
                collection="candles",
                row_count=2880,
                first_time=day0,
                last_time=day0 + 2 * DAY - MIN,
                health_score=98,
                schema=[
                    SchemaField(name="open_time", type="long", description="bucket start, epoch ms UTC"),
                    SchemaField(name="close", type="double"),
                ],
            ),
            DatasetIn(kind="agg_trades", symbol="BTCUSDT", collection="agg_trades", row_count=30),
        ]
    )
    meta.replace_lineage(
        [
            LineageEdge(upstream="raw/klines", downstream="candles/candles_1m", transformation="Build 1m candles."),
            LineageEdge(upstream="candles/candles_1m", downstream="candles/candles_5m"),
        ]
    )
    meta.create_backfill_job(
        origin="ui",
        symbols=["BTCUSDT"],
        interval="1m",
        start_time=day0,
        end_time=day0 + DAY,
        status="success",
        job_id="bf-ui-1",
        dagster_backfill_id="bf-ui-1",
    )


@pytest.fixture(scope="module")
def seeded(mongo_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    db = f"api_{uuid.uuid4().hex[:10]}"
    store = MongoStore(mongo_server.url, db, retry_attempts=2, server_selection_timeout_ms=3000)
    store.ensure_indexes()
    meta = MetadataStore(f"sqlite:///{tmp_path_factory.mktemp('api_meta') / 'metadata.db'}")
    meta.migrate()
    day0 = _day0()
    seed_mongo(store, day0)
    seed_meta(meta, day0)
    # Dagster is not running for these tests: a closed port makes it "down" at once.
    settings = load_settings(
        mongo_url=mongo_server.url,
        mongo_db=db,
        metadata_url=str(meta.url),
        symbols=["BTCUSDT", "ETHUSDT"],
        api_token=TOKEN,
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
    )
    yield Seeded(store, meta, settings, day0)
    store.client.drop_database(db)
    store.close()
    meta.close()


@pytest.fixture(scope="module")
def base(seeded: Seeded) -> Iterator[str]:
    # Revalidate on every hit so a newly landed candle is seen at once (the test below).
    app = create_app(
        seeded.settings,
        mongo=seeded.store,
        meta=seeded.meta,
        api_settings=ApiSettings(cache_revalidate_s=0.0, cache_ttl_s=60.0),
    )
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module")
def http(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client


def error_for(resp: httpx.Response, status: int | tuple[int, ...], param: str) -> str:
    """The message of a 4xx, after checking it names ``param``."""
    statuses = (status,) if isinstance(status, int) else status
    assert resp.status_code in statuses, resp.text
    body = ErrorResponse.model_validate(resp.json())
    assert isinstance(body.detail, list)
    assert any(param in [str(x) for x in item.loc] for item in body.detail), body
    return " ".join(item.msg for item in body.detail)


# --- data -----------------------------------------------------------------------------------------------


def test_latest_candles_are_the_newest_rows_in_order(http: httpx.Client, seeded: Seeded) -> None:
    resp = http.get("/data/candles", params={"pair": "btcusdt", "period": "1m", "limit": 1000})
    assert resp.status_code == 200, resp.text
    page = CandlesPage.model_validate(resp.json())
    stored = CandleStore(seeded.store).read_range("BTCUSDT", "1m")[-1000:]
    assert (page.pair, page.period, page.count, page.next) == ("BTCUSDT", "1m", 1000, None)
    assert [c.open_time for c in page.rows] == [d["open_time"] for d in stored]
    assert [c.close for c in page.rows] == [d["close"] for d in stored]
    assert page.rows[0].model_dump() == {k: v for k, v in stored[0].items() if k in Candle.model_fields}
    # A candle that stays suspect carries its flags through the API.
    assert page.rows[0].flags == [] and page.rows[-1].flags == ["bad_print", "verified"]


def test_candle_pages_follow_next_links_over_the_whole_range(http: httpx.Client, seeded: Seeded) -> None:
    start = dt.datetime.fromtimestamp(seeded.day0 / 1000, tz=dt.UTC).isoformat().replace("+00:00", "Z")
    url: str | None = "/data/candles"
    params: dict[str, Any] | None = {
        "pair": "BTCUSDT",
        "period": "1m",
        "start": start,
        "end": seeded.day0 + 2 * DAY,
        "limit": 1000,
    }
    times: list[int] = []
    pages = 0
    while url:
        resp = http.get(url, params=params)
        assert resp.status_code == 200, resp.text
        page = CandlesPage.model_validate(resp.json())
        times.extend(c.open_time for c in page.rows)
        url, params, pages = page.next, None, pages + 1
    assert pages == 3
    assert times == [seeded.day0 + i * MIN for i in range(2880)]


def test_candles_stream_as_ndjson(http: httpx.Client, seeded: Seeded) -> None:
    params = {"pair": "BTCUSDT", "period": "1h", "start": seeded.day0, "end": seeded.day0 + DAY, "format": "ndjson"}
    with http.stream("GET", "/data/candles", params=params) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in resp.iter_lines() if line]
    assert [row["open_time"] for row in lines] == [seeded.day0 + i * HOUR for i in range(24)]
    assert set(lines[0]) <= set(CandlesPage.model_fields["rows"].annotation.__args__[0].model_fields)  # type: ignore


def test_candle_pages_cross_midnight_utc_without_losing_or_repeating_a_minute(
    http: httpx.Client, seeded: Seeded
) -> None:
    midnight = seeded.day0 + DAY
    url: str | None = "/data/candles"
    params: dict[str, Any] | None = {"pair": "BTCUSDT", "start": midnight - 5 * MIN, "limit": 3}
    times: list[int] = []
    nexts: list[str] = []
    while url and len(times) < 12:
        page = CandlesPage.model_validate(http.get(url, params=params).json())
        times.extend(c.open_time for c in page.rows)
        url, params = page.next, None
        if url:
            nexts.append(url)
    assert times == [midnight + (i - 5) * MIN for i in range(12)]
    # cursors are "last open_time + 1": the first page's ends at 23:57, the next starts 23:57:00.001
    assert f"start={midnight - 3 * MIN + 1}" in nexts[0]
    # an end exactly at midnight excludes 00:00; a start 1 ms before midnight includes it
    before = http.get("/data/candles", params={"pair": "BTCUSDT", "start": midnight - 2 * MIN, "end": midnight}).json()
    assert [r["open_time"] for r in before["rows"]] == [midnight - 2 * MIN, midnight - MIN] and before["next"] is None
    at = http.get("/data/candles", params={"pair": "BTCUSDT", "start": midnight - 1, "limit": 1}).json()
    assert [r["open_time"] for r in at["rows"]] == [midnight]
    # ISO-8601 with an explicit UTC offset means the same instant
    iso = http.get(
        "/data/candles", params={"pair": "BTCUSDT", "start": "1970-01-01T00:00:00+00:00", "end": midnight - 2 * DAY}
    ).json()
    assert iso["rows"] == [] and iso["next"] is None


@pytest.mark.parametrize("fmt", ["ndjson", "arrow", "csv"])
def test_candle_streams_cross_day_buckets_in_every_format(http: httpx.Client, seeded: Seeded, fmt: str) -> None:
    import io

    import pyarrow.csv as pacsv
    import pyarrow.ipc as ipc

    midnight = seeded.day0 + DAY
    lo, hi = midnight - 90 * MIN, midnight + 30 * MIN
    params = {"pair": "BTCUSDT", "start": lo, "end": hi, "format": fmt}
    resp = http.get("/data/candles", params=params)
    assert resp.status_code == 200, resp.text
    if fmt == "ndjson":
        rows = [json.loads(line) for line in resp.text.splitlines() if line]
    elif fmt == "arrow":
        assert resp.headers["content-type"].startswith("application/vnd.apache.arrow.stream")
        rows = ipc.open_stream(io.BytesIO(resp.content)).read_all().to_pylist()
    else:
        assert resp.headers["content-type"].startswith("text/csv")
        rows = pacsv.read_csv(io.BytesIO(resp.content)).to_pylist()
        for r in rows:  # CSV has no lists: flags are joined with "|", an empty cell is no flag
            r["flags"] = r["flags"].split("|") if r.get("flags") else []
    expected = [
        {k: v for k, v in r.items() if k in Candle.model_fields}
        for r in CandleStore(seeded.store).read_range("BTCUSDT", "1m", lo, hi)
    ]
    assert [r["open_time"] for r in rows] == [lo + i * MIN for i in range(120)]
    assert rows == expected
    capped = http.get("/data/candles", params={**params, "limit": 100})
    assert capped.status_code == 200
    if fmt == "ndjson":
        assert len([line for line in capped.text.splitlines() if line]) == 100


def test_trades_keep_every_digit_and_page_through_same_millisecond_ties(http: httpx.Client, seeded: Seeded) -> None:
    seen: list[int] = []
    url: str | None = "/data/trades"
    params: dict[str, Any] | None = {"pair": "BTCUSDT", "start": seeded.day0, "limit": 4}
    while url:
        resp = http.get(url, params=params)
        assert resp.status_code == 200, resp.text
        page = TradesPage.model_validate(resp.json())
        assert all(t.price == PRICE and t.qty == "0.00100000" for t in page.rows)
        seen.extend(t.agg_id for t in page.rows)
        url, params = page.next, None
    assert seen == list(range(1000, 1030))


def test_depth_and_funding(http: httpx.Client, seeded: Seeded) -> None:
    depth = DepthPage.model_validate(http.get("/data/depth", params={"pair": "BTCUSDT", "limit": 5}).json())
    assert depth.count == 5 and depth.rows[-1].final_update_id == 911
    assert depth.rows[0].bids == [["27000.10", "1.500"]]
    rates = FundingPage.model_validate(http.get("/data/funding", params={"pair": "BTCUSDT"}).json())
    assert [r.funding_time for r in rates.rows] == [seeded.day0 + i * 8 * HOUR for i in range(6)]  # type: ignore
    marks = FundingPage.model_validate(
        http.get(
            "/data/funding",
            params={"pair": "BTCUSDT", "source": "mark_prices", "start": seeded.day0, "end": seeded.day0 + 5000},
        ).json()
    )
    assert marks.source == "mark_prices" and marks.count == 5
    assert marks.rows[0].index_price == "27001.1"  # type: ignore[union-attr]


def test_a_pair_present_only_in_the_store_is_known(http: httpx.Client) -> None:
    page = CandlesPage.model_validate(http.get("/data/candles", params={"pair": "solusdt"}).json())
    assert (page.pair, page.count) == ("SOLUSDT", 5)


@pytest.mark.parametrize(
    ("params", "status", "param", "says"),
    [
        ({"pair": "DOGEUSDT"}, 404, "pair", "not a known pair"),
        ({"pair": '{"$ne": 1}'}, 422, "pair", "not a symbol"),
        ({"pair": "BTC USDT"}, 422, "pair", "not a symbol"),
        ({"pair": "BTCUSDT", "period": "2m"}, 422, "period", "not a supported interval"),
        ({"pair": "BTCUSDT", "period": "1s"}, 422, "period", "spot only"),
        ({"pair": "BTCUSDT", "start": "2026-03-11", "end": "2026-03-10"}, 422, "start", "must be before end"),
        ({"pair": "BTCUSDT", "limit": 0}, 422, "limit", "greater than or equal to 1"),
        ({"pair": "BTCUSDT", "limit": 5001}, 422, "limit", "less than or equal to 5000"),
        ({"pair": "BTCUSDT", "limit": "lots"}, 422, "limit", "valid integer"),
        ({"pair": "BTCUSDT", "start": "yesterday"}, 422, "start", "is neither ISO-8601"),
        ({"pair": "BTCUSDT", "end": "99999999999999999"}, 422, "end", "outside"),
        ({"period": "1m"}, 422, "pair", "required"),
    ],
)
def test_candle_parameters_are_validated(
    http: httpx.Client, params: dict[str, Any], status: int, param: str, says: str
) -> None:
    msg = error_for(http.get("/data/candles", params=params), status, param)
    assert says.lower() in msg.lower()


@pytest.mark.parametrize(
    "query",
    [
        "pair[$ne]=1",
        "pair=%7B%22%24ne%22%3A1%7D",
        "pair=BTCUSDT%00",
        "pair=%24where",
        "pair=BTCUSDT&start[$gt]=0&start=abc",
        "pair=BTCUSDT&start=%7B%22%24gt%22%3A0%7D",
    ],
)
def test_injection_attempts_are_4xx(http: httpx.Client, query: str) -> None:
    for path in ("/data/candles", "/data/trades", "/data/funding", "/analysis/volatility", "/health"):
        resp = http.get(f"{path}?{query}")
        assert 400 <= resp.status_code < 500, (path, query, resp.text)
        ErrorResponse.model_validate(resp.json())
    resp = http.get("/data/trades?pair=BTCUSDT&start=0&after=%7B%22%24gt%22%3A0%7D")
    error_for(resp, 422, "after")


def test_hot_cache_serves_hits_and_drops_them_when_a_newer_candle_lands(http: httpx.Client, seeded: Seeded) -> None:
    params = {"pair": "ETHUSDT", "period": "1m", "limit": 3}

    def cache_hits() -> float:
        text = http.get("/metrics").text
        m = re.search(r'^dm_api_cache_total\{result="hit"\} ([0-9.e+]+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    first = http.get("/data/candles", params=params).json()
    hits = cache_hits()
    assert http.get("/data/candles", params=params).json() == first
    assert cache_hits() == hits + 1
    newest = first["rows"][-1]["open_time"] + MIN
    put_candles(seeded.store, candle_docs("ETHUSDT", "1m", MIN, newest, 1))
    # The write bumps the dataset's version; the API's watcher (polling every 0.25 s) drops the entry.
    deadline = time.monotonic() + 15
    while (body := http.get("/data/candles", params=params).json()) == first and time.monotonic() < deadline:
        time.sleep(0.05)
    after = CandlesPage.model_validate(body)
    assert [c.open_time for c in after.rows] == [r["open_time"] for r in first["rows"][1:]] + [newest]


def test_cache_is_invalidated_by_version_notification_without_probing(seeded: Seeded) -> None:
    """With the watcher healthy no request probes the store; a bumped version drops the entry."""
    app = create_app(
        seeded.settings,
        mongo=seeded.store,
        meta=seeded.meta,
        api_settings=ApiSettings(cache_revalidate_s=3600.0, cache_poll_s=3600.0),  # only explicit polls below
    )
    st = app.state.dm
    params = {"pair": "BTCUSDT", "period": "1h", "limit": 2}
    with serve(app) as url, httpx.Client(base_url=url) as client:
        first = client.get("/data/candles", params=params).json()
        assert st.hot.notified
        for _ in range(5):
            assert client.get("/data/candles", params=params).json() == first
        newest = first["rows"][-1]["open_time"] + HOUR
        put_candles(seeded.store, candle_docs("BTCUSDT", "1h", HOUR, newest, 1))
        assert client.get("/data/candles", params=params).json() == first  # not yet told
        assert st._watcher.poll_once() == ["candles:BTCUSDT:1h"]
        after = client.get("/data/candles", params=params).json()
        assert [r["open_time"] for r in after["rows"]] == [first["rows"][-1]["open_time"], newest]
        assert st.hot.probes == 0
        # another dataset's bump leaves this entry alone
        put_candles(seeded.store, candle_docs("ETHUSDT", "1h", HOUR, newest, 1))
        assert st._watcher.poll_once() == ["candles:ETHUSDT:1h"]
        assert client.get("/data/candles", params=params).json() == after
        # the watcher losing the store falls back to probing per revalidation
        st._watcher.read_since = lambda _since: 1 / 0
        st._watcher.poll_once()
        assert not st.hot.notified
        st.hot.revalidate_s = 0.0
        client.get("/data/candles", params=params)
        client.get("/data/candles", params=params)
        assert st.hot.probes >= 1


# --- analytics ---------------------------------------------------------------------------------------------


def test_analytics_latest_range_and_empty(http: httpx.Client, seeded: Seeded) -> None:
    latest = AnalyticsPage.model_validate(http.get("/analysis/volatility", params={"pair": "BTCUSDT"}).json())
    assert latest.count == 1 and latest.rows[0].window_end == seeded.day0 + 45 * MIN
    assert latest.rows[0].values == {
        "realized_vol": 3.5,
        "bars": 60,
        "insufficient_data": False,
        "gk": None,
        "by_window": {"60": pytest.approx(0.3)},
    }
    many = AnalyticsPage.model_validate(
        http.get("/analysis/volatility", params={"pair": "BTCUSDT", "start": seeded.day0, "limit": 2}).json()
    )
    assert [r.window_end for r in many.rows] == [seeded.day0, seeded.day0 + 15 * MIN] and many.next
    rest = AnalyticsPage.model_validate(http.get(many.next).json())
    assert [r.window_end for r in rest.rows] == [seeded.day0 + 30 * MIN, seeded.day0 + 45 * MIN]
    for kind in ("volume", "spread", "trend"):
        resp = http.get(f"/analysis/{kind}", params={"pair": "ETHUSDT"})
        assert resp.status_code == 200 and AnalyticsPage.model_validate(resp.json()).count == 0
    error_for(http.get("/analysis/trend", params={"pair": "BTCUSDT", "period": "1x"}), 422, "period")


def test_correlation_keeps_the_requested_pairs(http: httpx.Client) -> None:
    page = AnalyticsPage.model_validate(http.get("/analysis/correlation", params={"pairs": "ethusdt,BTCUSDT"}).json())
    window = page.rows[0].values["windows"][0]
    assert window["symbols"] == ["BTCUSDT", "ETHUSDT"]
    assert window["matrix"] == [[1.0, 0.8], [0.8, 1.0]]
    assert window["graph"]["edges"] == [{"source": "BTCUSDT", "target": "ETHUSDT", "weight": 0.8}]
    full = AnalyticsPage.model_validate(http.get("/analysis/correlation").json())
    assert len(full.rows[0].values["windows"][0]["symbols"]) == 3
    error_for(http.get("/analysis/correlation", params={"pairs": "BTCUSDT,NOPEUSDT"}), 404, "pairs")
    error_for(http.get("/analysis/correlation", params={"pairs": "BTCUSDT,{$gt:0}"}), 422, "pairs")


# --- health -------------------------------------------------------------------------------------------------


def test_liveness_and_readiness_name_the_dependency_that_is_down(http: httpx.Client) -> None:
    assert http.get("/health/liveness").json() == {"status": "ok"}
    resp = http.get("/health/readiness")
    # Dagster down only degrades the API (backfill routes answer 503 naming it): still ready.
    assert resp.status_code == 200
    ready = Readiness.model_validate(resp.json())
    assert (
        ready.status == "healthy" and ready.state == "degraded" and ready.down == [] and ready.degraded == ["dagster"]
    )
    assert {c.name: c.ok for c in ready.checks} == {"mongodb": True, "metadata": True, "dagster": False}


def test_health_summary_and_per_pair(http: httpx.Client, seeded: Seeded) -> None:
    summary = HealthSummary.model_validate(http.get("/health/summary").json())
    assert {(p.pair, p.score) for p in summary.pairs} == {("BTCUSDT", 98.0), ("ETHUSDT", 40.0)}
    rows = PairHealth.model_validate(http.get("/health", params={"pair": "BTCUSDT"}).json())
    assert [r.score for r in rows.rows] == [97.0, 98.0]
    one = PairHealth.model_validate(
        http.get("/health", params={"pair": "BTCUSDT", "start": seeded.day0, "end": seeded.day0 + DAY}).json()
    )
    assert [r.score for r in one.rows] == [97.0]
    error_for(http.get("/health", params={"pair": "XRPUSDT"}), 404, "pair")


# --- catalog ------------------------------------------------------------------------------------------------


def test_catalog_datasets_schema_and_lineage(http: httpx.Client) -> None:
    listed = [DatasetRecord.model_validate(d) for d in http.get("/catalog/datasets").json()]
    assert [d.id for d in listed] == ["agg_trades:BTCUSDT", "candles:BTCUSDT:1m"]
    only = http.get("/catalog/datasets", params={"kind": "candles", "pair": "btcusdt"}).json()
    assert [d["id"] for d in only] == ["candles:BTCUSDT:1m"]
    one = DatasetRecord.model_validate(http.get("/catalog/datasets/candles:BTCUSDT:1m").json())
    assert (one.row_count, one.health_score) == (2880, 98.0)
    schema = DatasetSchema.model_validate(http.get("/catalog/schemas/candles:BTCUSDT:1m").json())
    assert [f.name for f in schema.fields] == ["open_time", "close"]
    lin = LineageResponse.model_validate(http.get("/catalog/lineage/candles:BTCUSDT:1m").json())
    assert lin.node == "candles/candles_1m"
    assert [e.upstream for e in lin.lineage.upstream] == ["raw/klines"]
    assert [e.downstream for e in lin.lineage.downstream] == ["candles/candles_5m"]
    deep = LineageResponse.model_validate(http.get("/catalog/lineage/candles/candles_5m", params={"depth": 2}).json())
    assert [e.upstream for e in deep.lineage.upstream] == ["candles/candles_1m", "raw/klines"]
    error_for(http.get("/catalog/datasets/candles:NOPE:1m"), 404, "dataset_id")
    error_for(http.get("/catalog/schemas/nope"), 404, "dataset_id")
    error_for(http.get("/catalog/lineage/nothing_here"), 404, "dataset_id")
    error_for(http.get("/catalog/datasets/%27%20OR%201=1--"), 422, "dataset_id")


# --- backfill -------------------------------------------------------------------------------------------------


def test_backfill_start_needs_the_token(http: httpx.Client, seeded: Seeded) -> None:
    body = {"pairs": ["BTCUSDT"], "period": "1m", "start": seeded.day0, "end": seeded.day0 + DAY}
    error_for(http.post("/backfill/start", json=body), 401, "Authorization")
    error_for(http.post("/backfill/start", json=body, headers={"Authorization": "Bearer wrong"}), 401, "Authorization")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # Valid request, but Dagster is down: 503 that says so, and nothing recorded.
    msg = error_for(http.post("/backfill/start", json=body, headers=auth), 503, "dagster")
    assert "not reachable" in msg
    bad = [
        ({**body, "start": seeded.day0 + DAY, "end": seeded.day0}, "start"),
        ({**body, "pairs": [{"$ne": 1}]}, "pairs"),
        ({**body, "pairs": ["NOPEUSDT"]}, "pairs"),
        ({**body, "period": "7m"}, "period"),
        ({**body, "start": "2019-01-01"}, "start"),
        ({**body, "end": "2999-01-01"}, "end"),
        ({"pairs": ["BTCUSDT"]}, "start"),
    ]
    for payload, param in bad:
        error_for(http.post("/backfill/start", json=payload, headers=auth), (404, 422), param)
    assert [j.id for j in BackfillJobList.model_validate(http.get("/backfill/jobs").json()).jobs] == ["bf-ui-1"]


def test_backfill_jobs_are_listed_and_reported_from_the_store_when_dagster_is_down(http: httpx.Client) -> None:
    jobs = BackfillJobList.model_validate(http.get("/backfill/jobs", params={"status": "success"}).json())
    assert [j.id for j in jobs.jobs] == ["bf-ui-1"]
    assert BackfillJobList.model_validate(http.get("/backfill/jobs", params={"status": "running"}).json()).jobs == []
    view = BackfillJobView.model_validate(http.get("/backfill/jobs/bf-ui-1").json())
    assert (view.source, view.status, view.live) == ("store", "success", None)
    error_for(http.get("/backfill/jobs/nope"), 404, "job_id")
    error_for(http.get("/backfill/jobs", params={"status": "bogus"}), 422, "status")


def test_an_active_backfill_without_dagster_is_a_503_naming_it(seeded: Seeded, tmp_path: Path) -> None:
    """Only finished jobs are answered from the store when Dagster is down: a stored "running" may be stale."""
    meta = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}")
    meta.migrate()
    for job_id, status in (("bf-running", "running"), ("bf-done", "failure")):
        meta.create_backfill_job(
            origin="api", symbols=["BTCUSDT"], interval="1m", status=status, job_id=job_id, dagster_backfill_id=job_id
        )
    dead = f"http://127.0.0.1:{free_port()}/graphql"
    app = create_app(seeded.settings.model_copy(update={"dagster_graphql_url": dead}), mongo=seeded.store, meta=meta)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        resp = client.get("/backfill/jobs/bf-running")
        assert resp.status_code == 503, resp.text
        assert resp.json()["detail"][0]["loc"] == ["dagster"] and "last stored: running" in resp.text
        done = BackfillJobView.model_validate(client.get("/backfill/jobs/bf-done").json())
        assert (done.source, done.status) == ("store", "failure")
        ready = client.get("/health/readiness")
        assert ready.status_code == 200 and "dagster" in ready.json()["degraded"]
    meta.close()


# --- metrics, docs, auth on reads -----------------------------------------------------------------------------------


def test_metrics_count_requests_per_route_with_latency_histograms(http: httpx.Client) -> None:
    http.get("/data/candles", params={"pair": "BTCUSDT", "limit": 2})
    http.get("/catalog/datasets/none-such")
    text = http.get("/metrics").text
    assert re.search(r'dm_api_requests_total\{method="GET",route="/data/candles",status="200"\} [1-9]', text)
    assert re.search(
        r'dm_api_requests_total\{method="GET",route="/catalog/datasets/\{dataset_id\}",'
        r'status="404"\} [1-9]',
        text,
    )
    assert 'dm_api_request_duration_seconds_bucket{le="0.025",method="GET",route="/data/candles"}' in text


def test_openapi_and_docs_are_served(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    for path in (
        "/data/candles",
        "/analysis/correlation",
        "/catalog/lineage/{dataset_id}",
        "/backfill/start",
        "/health",
        "/metrics",
    ):
        assert path in spec["paths"]
    params = {p["name"] for p in spec["paths"]["/data/candles"]["get"]["parameters"]}
    assert {"pair", "period", "start", "end", "limit"} <= params
    assert "swagger" in http.get("/docs").text.lower()


def test_docs_pages_load_nothing_from_outside(http: httpx.Client) -> None:
    """/docs and /redoc must render air-gapped: every script and stylesheet comes from this app."""
    for page in ("/docs", "/redoc"):
        html = http.get(page).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert refs, page
        external = [r for r in refs if r.startswith(("http:", "https:", "//"))]
        assert external == [], f"{page} loads {external}"
        for ref in refs:
            if ref.startswith("/docs-assets/"):
                resp = http.get(ref)
                assert resp.status_code == 200 and len(resp.content) > 1000, ref


def test_metadata_errors_say_whether_a_retry_can_help(seeded: Seeded) -> None:
    """Unavailable (lost connection, lock timeout) is a 503 to retry; a refused statement is a 500, not retried."""
    from sqlalchemy.exc import DataError
    from sqlalchemy.exc import OperationalError as SAOperationalError

    app = create_app(seeded.settings, mongo=seeded.store, meta=seeded.meta)

    @app.get("/test/refused")
    def refused() -> None:
        raise DataError("INSERT ...", {}, ValueError("Data too long for column 'symbol'"))

    @app.get("/test/locked")
    def locked() -> None:
        raise SAOperationalError("SELECT 1", {}, RuntimeError("database is locked"))

    with serve(app) as url, httpx.Client(base_url=url) as client:
        r = client.get("/test/refused")
        assert r.status_code == 500 and "DataError" in r.text and "retry" not in r.text
        r = client.get("/test/locked")
        assert r.status_code == 503 and "retry later" in r.text


def test_reads_can_require_the_token(seeded: Seeded, tmp_path: Path) -> None:
    app = create_app(
        seeded.settings, mongo=seeded.store, meta=seeded.meta, api_settings=ApiSettings(protect_reads=True)
    )
    with serve(app) as url, httpx.Client(base_url=url) as client:
        error_for(client.get("/data/candles", params={"pair": "BTCUSDT"}), 401, "Authorization")
        ok = client.get(
            "/data/candles", params={"pair": "BTCUSDT", "limit": 1}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert ok.status_code == 200 and ok.json()["count"] == 1
        assert client.get("/health/liveness").status_code == 200  # probes stay open
