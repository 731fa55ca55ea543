"""The trading services' contract (/api/v1, /positions, /pnl/daily) over real HTTP against SecantusDB and SQL.

Requests are sent exactly as the services' clients send them (paths, bodies, JSON-encoded
``filter``/``sort`` query parameters); dm_client is used where a test is about our own client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson.decimal128 import Decimal128
from pydantic import SecretStr
from sqlalchemy import text

from api.app import create_app
from api.deps import ApiSettings
from api.testing import serve
from dm_client import AsyncDMClient, DMClient, Forbidden, InvalidRequest, NotFound, Unauthorized
from dm_resources.candle_store import CandleStore
from dm_resources.embedded import free_port
from dm_resources.metadata.platform import PlatformTables
from dm_resources.metadata.store import MetadataStore, head_revision
from dm_resources.mongo import MongoStore
from dm_resources.settings import Settings, load_settings
from tests.conftest import _drop_mysql_database, _fresh_mysql_database, metadata_backends

LEGACY = "legacy-write-token"
ENGINE = "engine-token-0123456789"
EXTRACTOR = "extractor-token-0123456789"
READER = "reader-token-0123456789"
TOKENS = {ENGINE: ["positions:write", "pnl:write", "read"], EXTRACTOR: ["klines:write", "read"], READER: ["read"]}
M15 = 15 * 60_000
T0 = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
PRICE = "27123.123456789012345678"  # 24 significant digits


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def kline_record(symbol: str, open_ms: int, interval: str = "15m", step: int = M15, i: int = 0) -> dict[str, Any]:
    """An extractor's kline record, as its jobs send it."""
    base = Decimal("27000") + Decimal(i % 50)
    return {
        "symbol": symbol,
        "interval": interval,
        "open_time": iso(open_ms),
        "close_time": iso(open_ms + step - 1),
        "timestamp": iso(open_ms),
        "open_price": str(base),
        "high_price": PRICE if i == 0 else str(base + 5),
        "low_price": str(base - 5),
        "close_price": str(base + 1),
        "volume": "12.345",
        "quote_asset_volume": "333333.5",
        "taker_buy_base_asset_volume": "6.1",
        "taker_buy_quote_asset_volume": "165000.25",
        "price_change": "1",
        "price_change_percent": "0.0037",
        "number_of_trades": 100 + i,
        "source": "binance_futures",
        "extractor_version": "2.3.1",
        "extracted_at": "2026-03-20T00:00:00Z",
    }


@dataclass
class Env:
    url: str
    store: MongoStore
    meta: MetadataStore
    settings: Settings


def make_app(store: MongoStore, meta: MetadataStore, settings: Settings, **api: Any) -> Any:
    return create_app(
        settings, mongo=store, meta=meta, api_settings=ApiSettings(tokens=SecretStr(json.dumps(TOKENS)), **api)
    )


def settings_for(store: MongoStore, meta_url: str) -> Settings:
    # Dagster is not running: a closed port makes it "down" at once.
    return load_settings(
        mongo_url=store.url,
        mongo_db=store.db_name,
        metadata_url=meta_url,
        symbols=["BTCUSDT", "ETHUSDT"],
        api_token=LEGACY,
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
    )


@pytest.fixture(scope="module", params=metadata_backends())
def env(request: pytest.FixtureRequest, mongo_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The API over SecantusDB and a migrated metadata database: SQLite, and MariaDB when CI provides it."""
    db = f"p_{uuid.uuid4().hex[:10]}"
    store = MongoStore(mongo_server.url, db, retry_attempts=2, server_selection_timeout_ms=3000)
    store.ensure_indexes()
    mysql_db: str | None = None
    if request.param == "mysql":
        meta_url, mysql_db = _fresh_mysql_database(os.environ["DM_TEST_MYSQL_URL"])
    else:
        meta_url = f"sqlite:///{tmp_path_factory.mktemp('platform') / 'metadata.db'}"
    meta = MetadataStore(meta_url)
    meta.migrate()
    settings = settings_for(store, meta_url)
    try:
        with serve(make_app(store, meta, settings)) as url:
            yield Env(url, store, meta, settings)
    finally:
        store.client.drop_database(db)
        store.close()
        meta.close()
        if mysql_db is not None:
            _drop_mysql_database(os.environ["DM_TEST_MYSQL_URL"], mysql_db)


def stored_decimal(env: Env, value: str) -> str:
    """What a decimal column gives back: every digit on MariaDB, a REAL's shortest repr on SQLite."""
    return value if env.meta.backend == "mysql" else repr(float(value))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def http(env: Env) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env.url, timeout=60) as c:
        yield c


def detail(resp: httpx.Response, status: int, loc: str) -> str:
    assert resp.status_code == status, resp.text
    items = resp.json()["detail"]
    assert any(loc in [str(x) for x in item["loc"]] for item in items), items
    return " ".join(item["msg"] for item in items)


# --- klines from extractors -----------------------------------------------------------------------------


def test_klines_batch_of_1500_then_an_overlapping_batch_counts_duplicates(http: httpx.Client, env: Env) -> None:
    first = [kline_record("BTCUSDT", T0 + i * M15, i=i) for i in range(1500)]
    resp = http.post(
        "/api/v1/data/insert",
        json={"database": "mongodb", "collection": "klines_15m", "records": first},
        headers=auth(EXTRACTOR),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"inserted_count": 1500, "duplicates": 0, "failed": 0, "errors": []}

    # The next window overlaps the last 30 minutes (2 klines) and adds 50 new ones.
    second = [kline_record("BTCUSDT", T0 + i * M15, i=i) for i in range(1498, 1550)]
    body = http.post(
        "/api/v1/data/insert",
        json={"database": "mongodb", "collection": "klines_15m", "records": second},
        headers=auth(EXTRACTOR),
    ).json()
    assert body == {"inserted_count": 50, "duplicates": 2, "failed": 0, "errors": []}

    # Stored in the raw klines collection, our field names, exact decimals, deterministic _id.
    doc = env.store.collection("klines").find_one({"_id": f"BTCUSDT:15m:{T0}"})
    assert doc is not None
    assert doc["high"] == Decimal128(PRICE) and doc["open"] == Decimal128("27000")
    assert doc["source"] == "extractor" and doc["trades"] == 100
    assert doc["open_time"] == T0 and doc["close_time"] == T0 + M15 - 1
    assert env.store.count("klines", "BTCUSDT", {"interval": "15m"}) == 1550


def test_latest_kline_query_returns_close_time_as_iso_z(http: httpx.Client) -> None:
    records = [kline_record("ETHUSDT", T0 + i * M15, i=i) for i in range(40)]
    http.post(
        "/api/v1/data/insert",
        json={"database": "mongodb", "collection": "klines_15m", "records": records},
        headers=auth(EXTRACTOR),
    ).raise_for_status()
    for collection in ("klines_15m", "klines_m15"):  # the older spelling names the same klines
        resp = http.get(
            f"/api/v1/mongodb/{collection}",
            params={"filter": json.dumps({"symbol": "ETHUSDT"}), "sort": json.dumps({"close_time": -1}), "limit": 1},
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["data"]) == 1 and body["pagination"]["has_more"] is True
        latest = body["data"][0]
        assert latest["close_time"] == iso(T0 + 40 * M15 - 1) and latest["close_time"].endswith("Z")
        assert dt.datetime.fromisoformat(latest["close_time"]) == dt.datetime.fromtimestamp(
            (T0 + 40 * M15 - 1) / 1000, tz=dt.UTC
        )
        assert latest["open_price"] == records[-1]["open_price"] and latest["number_of_trades"] == 139
    # Ascending with a time filter and a projection, through POST /api/v1/data/query.
    page = http.post(
        "/api/v1/data/query",
        json={
            "database": "mongodb",
            "collection": "klines_15m",
            "filter": {"symbol": "ETHUSDT", "open_time": {"$gte": iso(T0 + 10 * M15)}},
            "sort": {"open_time": 1},
            "limit": 5,
            "offset": 2,
            "fields": ["open_time", "close_price"],
        },
    ).json()
    assert [r["open_time"] for r in page["data"]] == [iso(T0 + i * M15) for i in range(12, 17)]
    assert set(page["data"][0]) == {"open_time", "close_price"}
    assert page["pagination"] == {"limit": 5, "offset": 2, "returned": 5, "has_more": True, "next_offset": 7}


def test_a_partial_klines_batch_stores_the_good_records_and_lists_the_bad(http: httpx.Client, env: Env) -> None:
    t = T0 + 5000 * M15
    good = [kline_record("SOLUSDT", t + i * M15, i=i) for i in range(3)]
    bad: list[tuple[Any, str]] = [
        ({k: v for k, v in good[0].items() if k != "open_price"}, "open_price"),
        ({**good[0], "open_time": iso(t + 60_000)}, "not the start"),
        ({**good[0], "interval": "1h"}, "does not match"),
        ({**good[0], "high_price": "1"}, "OHLC"),
        ({**good[0], "volume": "abc"}, "not a decimal"),
        ({**good[0], "open_price": {"$gt": 1}}, "object is not allowed"),
        ({**good[0], "symbol": "btc/usdt"}, "symbol"),
        ({**good[0], "$where": "1"}, "unknown field"),
        ("not a record", "JSON object"),
    ]
    records = [good[0], *(b for b, _ in bad), good[1], good[2]]
    body = http.post(
        "/api/v1/data/insert",
        json={"database": "mongodb", "collection": "klines_15m", "records": records},
        headers=auth(EXTRACTOR),
    ).json()
    assert body["inserted_count"] == 3 and body["duplicates"] == 0 and body["failed"] == len(bad)
    assert [e["index"] for e in body["errors"]] == list(range(1, len(bad) + 1))
    for err, (_, reason) in zip(body["errors"], bad, strict=True):
        assert reason in err["reason"], (err, reason)
    assert env.store.count("klines", "SOLUSDT") == 3


def test_out_of_range_decimals_and_times_fail_their_record_not_the_batch(http: httpx.Client, env: Env) -> None:
    """Values that parse but do not fit Decimal128 or a datetime were a 500 that lost the whole batch."""
    t = T0 + 6000 * M15
    good = [kline_record("ADAUSDT", t + i * M15, i=i) for i in range(2)]
    bad: list[tuple[Any, str]] = [
        ({**good[0], "volume": "1e999999"}, "volume"),  # exponent beyond Decimal128
        ({**good[0], "volume": "1e-7000"}, "volume"),
        ({**good[0], "number_of_trades": 1, "volume": 10**40}, "significant digits"),  # a JSON integer of 41 digits
        ({**good[0], "extracted_at": "0001-01-01T00:00:00+01:00"}, "extracted_at"),  # before year 1 in UTC
        ({**good[0], "extracted_at": "9999-12-31T23:59:59-01:00"}, "extracted_at"),  # after year 9999 in UTC
    ]
    records = [good[0], *(b for b, _ in bad), good[1]]
    resp = http.post(
        "/api/v1/data/insert",
        json={"database": "mongodb", "collection": "klines_15m", "records": records},
        headers=auth(EXTRACTOR),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["inserted_count"] == 2 and body["failed"] == len(bad), body
    for err, (_, reason) in zip(body["errors"], bad, strict=True):
        assert reason in err["reason"], (err, reason)
    assert env.store.count("klines", "ADAUSDT") == 2
    # The same values in a filter are a 422 naming the field, not a 500.
    for flt, field in (
        ({"symbol": "BTCUSDT", "price": {"$gt": "1e999999"}}, "price"),
        ({"symbol": "BTCUSDT", "trade_time": {"$gt": "0001-01-01T00:00:00+05:00"}}, "trade_time"),
    ):
        resp = http.get("/api/v1/mongodb/agg_trades", params={"filter": json.dumps(flt)})
        assert field in detail(resp, 422, "filter")


# --- positions and daily PnL -----------------------------------------------------------------------------


def test_a_float_field_given_a_huge_integer_fails_its_record_not_the_batch(http: httpx.Client) -> None:
    """``duration_seconds: 10**400`` (a JSON integer) raised OverflowError: a 500 that stored nothing."""
    base = {"symbol": "LTCUSDT", "status": "closed", "position_side": "LONG"}
    records = [{**base, "position_id": "huge-0"}, {**base, "position_id": "huge-1", "duration_seconds": 10**400}]
    resp = http.post(
        "/api/v1/data/insert",
        json={"database": "mysql", "collection": "positions", "records": records},
        headers=auth(ENGINE),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["inserted_count"] == 1 and body["failed"] == 1 and "duration_seconds" in body["errors"][0]["reason"]
    flt = {"symbol": "BTCUSDT", "interval": "1m", "close": {"$gt": 10**400}}
    resp = http.post("/api/v1/data/query", json={"database": "mongodb", "collection": "candles", "filter": flt})
    assert "close" in detail(resp, 422, "filter")


def test_nan_inside_a_json_field_fails_its_record_not_the_batch(http: httpx.Client) -> None:
    """Python's json.dumps writes NaN/Infinity; inside ``metadata`` it reached MariaDB's JSON check (a 500)."""
    base = {"symbol": "LTCUSDT", "status": "closed", "position_side": "SHORT"}
    records = [
        {**base, "position_id": "nan-0", "metadata": {"score": 0.5}},
        {**base, "position_id": "nan-1", "metadata": {"score": float("nan")}},
        {**base, "position_id": "nan-2", "exit_trade_ids": [1, float("inf")]},
    ]
    content = json.dumps({"database": "mysql", "collection": "positions", "records": records})  # NaN, Infinity
    resp = http.post(
        "/api/v1/data/insert", content=content, headers={**auth(ENGINE), "Content-Type": "application/json"}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["inserted_count"] == 1 and body["failed"] == 2, body
    assert "metadata" in body["errors"][0]["reason"] and "exit_trade_ids" in body["errors"][1]["reason"]


def test_position_lifecycle(http: httpx.Client, env: Env) -> None:
    opened = {
        "position_id": "pos-1",
        "strategy_id": "trend-1",
        "exchange": "binance",
        "symbol": "BTCUSDT",
        "position_side": "LONG",
        "entry_price": PRICE,
        "quantity": "0.010",
        "entry_time": "2026-03-10T12:00:00.123456+00:00",
        "stop_loss": "26000",
        "take_profit": 28500.5,
        "status": "open",
        "metadata": {"signal": "breakout", "score": 0.8},
        "entry_order_id": "o-1",
        "entry_trade_ids": [11, 12],
        "commission_asset": "USDT",
        "commission_total": "0.108",
    }
    resp = http.post(
        "/api/v1/data/insert",
        json={"database": "mysql", "collection": "positions", "records": [opened]},
        headers=auth(ENGINE),
    )
    assert resp.json() == {"inserted_count": 1, "duplicates": 0, "failed": 0, "errors": []}, resp.text
    # Retried insert: a duplicate, not a second row.
    again = http.post(
        "/api/v1/data/insert",
        json={"database": "mysql", "collection": "positions", "records": [opened]},
        headers=auth(ENGINE),
    ).json()
    assert again["duplicates"] == 1 and again["inserted_count"] == 0

    open_filter = {"symbol": "BTCUSDT", "position_side": "LONG", "status": "open"}
    sync = {"avg_price": "27100.5", "unrealized_pnl": "1.25", "last_update": "2026-03-10T12:00:30Z"}
    first = http.put(
        "/api/v1/mysql/positions",
        json={"filter": open_filter, "data": {**sync, "updated_at": "2026-03-10T12:00:30Z"}, "upsert": True},
        headers=auth(ENGINE),
    ).json()
    assert first == {"matched_count": 1, "modified_count": 1, "upserted_count": 0, "upserted_id": None}
    second = http.put(
        "/api/v1/mysql/positions",
        json={
            "filter": open_filter,
            "data": {**sync, "unrealized_pnl": "2.5", "updated_at": "2026-03-10T12:01:00Z"},
            "upsert": True,
        },
        headers=auth(ENGINE),
    ).json()
    assert second["matched_count"] == 1 and second["modified_count"] == 1 and second["upserted_count"] == 0
    same = http.put(
        "/api/v1/mysql/positions",
        json={"filter": open_filter, "data": {"unrealized_pnl": "2.5"}, "upsert": True},
        headers=auth(ENGINE),
    ).json()
    assert same["matched_count"] == 1 and same["modified_count"] == 0  # nothing changed

    found = http.get(
        "/api/v1/mysql/positions", params={"filter": json.dumps({"symbol": "BTCUSDT", "status": "open"})}
    ).json()
    assert len(found["data"]) == 1
    row = found["data"][0]
    assert row["position_id"] == "pos-1" and row["unrealized_pnl"] == "2.5"
    assert row["entry_price"] == stored_decimal(env, PRICE)
    assert row["metadata"] == {"signal": "breakout", "score": 0.8} and row["entry_trade_ids"] == [11, 12]
    assert row["entry_time"] == "2026-03-10T12:00:00.123456Z"

    close = {
        "status": "closed",
        "closed_at": "2026-03-10T13:00:00Z",
        "final_realized_pnl": "12.5",
        "exit_price": "27400",
        "exit_time": "2026-03-10T13:00:00Z",
        "close_reason": "take_profit",
        "duration_seconds": 3600,
    }
    closed = http.put(
        "/api/v1/mysql/positions",
        json={"filter": open_filter, "data": {"$set": close}, "upsert": False},
        headers=auth(ENGINE),
    ).json()
    assert closed["modified_count"] > 0 and closed["upserted_count"] == 0
    # Closing again matches nothing (the filter asks for an open one) and inserts nothing.
    twice = http.put(
        "/api/v1/mysql/positions",
        json={"filter": open_filter, "data": {"$set": close}, "upsert": False},
        headers=auth(ENGINE),
    ).json()
    assert twice == {"matched_count": 0, "modified_count": 0, "upserted_count": 0, "upserted_id": None}

    with DMClient(env.url, token=READER) as client:
        assert client.open_positions().positions == []
        history = client.position_history(symbol="BTCUSDT")
        assert [p.position_id for p in history.positions] == ["pos-1"]
        assert history.positions[0].final_realized_pnl == "12.5"
        assert client.position("pos-1").status == "closed"
        with pytest.raises(NotFound):
            client.position("nope")

    # The slot is free again: the next upsert opens a new position.
    reopened = http.put(
        "/api/v1/mysql/positions",
        json={"filter": open_filter, "data": {"entry_price": "27500", "quantity": "0.02"}, "upsert": True},
        headers=auth(ENGINE),
    ).json()
    assert reopened["upserted_count"] == 1 and isinstance(reopened["upserted_id"], str)
    typed = http.get("/positions", params={"symbol": "BTCUSDT"}).json()
    assert [p["status"] for p in typed["positions"]] == ["closed", "open"]
    # A second open position for the same symbol and side is refused, naming why.
    dup_open = http.post(
        "/api/v1/data/insert",
        json={
            "database": "mysql",
            "collection": "positions",
            "records": [{**opened, "position_id": "pos-2"}],
        },
        headers=auth(ENGINE),
    ).json()
    assert dup_open["failed"] == 1 and "already exists" in dup_open["errors"][0]["reason"]
    # Re-opening the closed one would make two open positions: 409, nothing changed.
    conflict = http.put(
        "/api/v1/mysql/positions",
        json={"filter": {"position_id": "pos-1"}, "data": {"status": "open"}},
        headers=auth(ENGINE),
    )
    assert "already exists" in detail(conflict, 409, "data")
    assert http.get("/positions/pos-1").json()["status"] == "closed"
    # An upsert that would insert a position without its key fields is refused.
    msg = detail(
        http.put(
            "/api/v1/mysql/positions",
            json={"filter": {"position_id": "pos-9"}, "data": {"quantity": "1"}, "upsert": True},
            headers=auth(ENGINE),
        ),
        422,
        "filter",
    )
    assert "symbol" in msg and "position_side" in msg
    assert "non-empty filter" in detail(
        http.put("/api/v1/mysql/positions", json={"filter": {}, "data": {"quantity": "1"}}, headers=auth(ENGINE)),
        422,
        "filter",
    )
    # Typed routes validate their parameters.
    detail(http.get("/positions", params={"position_side": "long"}), 422, "position_side")
    detail(http.get("/positions/history", params={"from": "2026-03-11", "to": "2026-03-10"}), 422, "from")
    detail(http.get("/pnl/daily", params={"from": "2026-03-11", "to": "2026-03-10"}), 422, "from")


def test_daily_pnl_upserted_twice_is_one_row(http: httpx.Client, env: Env) -> None:
    for pnl, at in (("125.50", "2026-03-10T23:00:00Z"), ("-40.25", "2026-03-10T23:59:00Z")):
        resp = http.put(
            "/api/v1/mysql/daily_pnl",
            json={
                "filter": {"date": "2026-03-10"},
                "data": {"date": "2026-03-10", "daily_pnl": pnl, "updated_at": at},
                "upsert": True,
            },
            headers=auth(ENGINE),
        )
        assert resp.status_code == 200, resp.text
    with env.meta.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM daily_pnl")).scalar() == 1
    with DMClient(env.url) as client:
        client_upsert = DMClient(env.url, token=ENGINE)
        assert client_upsert.upsert_daily_pnl("2026-03-11", Decimal("10")).upserted_count == 1
        client_upsert.close()
        days = client.daily_pnl("2026-03-10", "2026-03-11")
    assert [(d.date, d.daily_pnl) for d in days.days] == [("2026-03-10", "-40.25"), ("2026-03-11", "10")]
    assert days.total == "-30.25"


def test_concurrent_upserts_of_one_open_position_end_with_one_row(mongo_store: MongoStore, metadata_url: str) -> None:
    meta = MetadataStore(metadata_url)
    meta.migrate()
    app = make_app(mongo_store, meta, settings_for(mongo_store, metadata_url))
    flt = {"symbol": "ETHUSDT", "position_side": "SHORT", "status": "open"}
    barrier = threading.Barrier(12)

    def upsert(i: int) -> dict[str, Any]:
        with httpx.Client(base_url=url, timeout=60) as c:
            barrier.wait()
            return c.put(
                "/api/v1/mysql/positions",
                json={"filter": flt, "data": {"entry_price": PRICE, "quantity": "1"}, "upsert": True},
                headers=auth(ENGINE),
            ).json()

    try:
        with serve(app) as url, ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(upsert, range(12)))
        assert sum(r["upserted_count"] for r in results) == 1, results
        assert all(r["upserted_count"] == 1 or r["matched_count"] == 1 for r in results), results
        with meta.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM positions")).scalar() == 1
        with serve(app) as url, DMClient(url) as client:
            (row,) = client.open_positions(symbol="ETHUSDT").positions
        # MariaDB keeps all 24 digits (DECIMAL(38, 18)); SQLite stores a REAL (15-17 digits).
        assert row.entry_price == (PRICE if meta.backend == "mysql" else repr(float(PRICE)))
    finally:
        meta.close()


def test_concurrent_inserts_of_one_record_count_one_insert_and_duplicates(metadata_url: str) -> None:
    """A key-conflict lost to a concurrent insert of the *same* record is a duplicate, not a failed record."""
    meta = MetadataStore(metadata_url)
    meta.migrate()
    tables = PlatformTables(meta)
    n = 8
    barrier = threading.Barrier(n)
    record = {"date": dt.date(2026, 4, 1), "daily_pnl": Decimal("12.5"), "created_at": dt.datetime.now(dt.UTC)}
    position = {"position_id": "race-1", "symbol": "BTCUSDT", "position_side": "LONG", "status": "open"}

    def insert(table: str, rec: dict[str, Any]) -> Any:
        barrier.wait()
        return tables.insert(table, [rec])

    try:
        for table, rec in (("daily_pnl", record), ("positions", position)):
            with ThreadPoolExecutor(max_workers=n) as pool:
                outs = list(pool.map(lambda _, t=table, r=rec: insert(t, r), range(n)))
            assert [o.errors for o in outs] == [[]] * n, (table, outs)
            assert sum(o.inserted for o in outs) == 1 and sum(o.duplicates for o in outs) == n - 1, (table, outs)
    finally:
        meta.close()


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flt", "needle"),
    [
        ({"$where": "sleep(1000)"}, "operator '$where' is not allowed"),
        ({"symbol": {"$function": {"body": "x", "args": [], "lang": "js"}}}, "operator '$function' is not allowed"),
        ({"symbol": {"$regex": ".*"}}, "operator '$regex' is not allowed"),
        ({"$or": [{"symbol": "BTCUSDT"}]}, "operator '$or' is not allowed"),
        ({"no_such_field": 1}, "unknown field 'no_such_field'"),
        ({"metadata.signal": "x"}, "unknown field 'metadata.signal'"),
        ({"entry_price": {"$gt": {"$gt": 1}}}, "object is not allowed"),
        ({"symbol": {"$in": [{"$ne": 1}]}}, "object is not allowed"),
        ({"symbol": ["BTCUSDT"]}, 'use {"$in"'),
        ({"entry_price": {"$gt": "abc"}}, "not a decimal"),
        ({"entry_time": {"$lt": "yesterday"}}, "not ISO-8601"),
        ({"metadata": {"a": 1}}, "cannot be filtered"),
    ],
)
def test_filters_outside_the_declared_subset_are_422(http: httpx.Client, flt: dict[str, Any], needle: str) -> None:
    get = http.get("/api/v1/mysql/positions", params={"filter": json.dumps(flt)})
    assert needle in detail(get, 422, "filter")
    post = http.post("/api/v1/data/query", json={"database": "mysql", "collection": "positions", "filter": flt})
    assert needle in detail(post, 422, "filter")
    put = http.put("/api/v1/mysql/positions", json={"filter": flt, "data": {"status": "closed"}}, headers=auth(ENGINE))
    assert needle in detail(put, 422, "filter")


def test_bad_requests_are_refused_before_any_store(http: httpx.Client, env: Env) -> None:
    allowed = "positions, daily_pnl, candles"
    msg = detail(http.get("/api/v1/mongodb/..%2Fadmin"), 404, "collection")
    assert "unknown collection '../admin'" in msg and allowed in msg and "klines_{interval}" in msg
    msg = detail(http.get("/api/v1/mongodb/system.users"), 404, "collection")
    assert allowed in msg
    body = {"database": "mongodb", "collection": "users", "records": []}
    assert allowed in detail(http.post("/api/v1/data/insert", json=body, headers=auth(LEGACY)), 422, "collection")
    msg = detail(http.get("/api/v1/mongodb/positions"), 422, "database")
    assert "lives in database 'mysql', not 'mongodb'" in msg
    assert "unknown database" in detail(http.get("/api/v1/admin/positions"), 422, "database")
    assert "5000" in detail(http.get("/api/v1/mysql/positions", params={"limit": 5001}), 422, "limit")
    assert "100000" in detail(http.get("/api/v1/mysql/positions", params={"offset": 100_001}), 422, "offset")
    assert "not valid JSON" in detail(http.get("/api/v1/mysql/positions", params={"filter": "{'a'"}), 422, "filter")
    assert "time only" in detail(
        http.get(
            "/api/v1/mongodb/klines_15m",
            params={"filter": json.dumps({"symbol": "BTCUSDT"}), "sort": json.dumps({"volume": 1})},
        ),
        422,
        "sort",
    )
    assert "index prefix" in detail(
        http.get("/api/v1/mongodb/klines_15m", params={"filter": json.dumps({"volume": {"$gt": "1"}})}), 422, "filter"
    )
    oversize = [kline_record("BTCUSDT", T0)] * 5001
    msg = detail(
        http.post(
            "/api/v1/data/insert",
            json={"database": "mongodb", "collection": "klines_15m", "records": oversize},
            headers=auth(EXTRACTOR),
        ),
        413,
        "records",
    )
    assert "batch size limit of 5000" in msg
    ops = [{"type": "delete", "filter": {"date": "2020-01-01"}}] * 1001
    assert "1000" in detail(
        http.post("/api/v1/mysql/daily_pnl/batch", json={"operations": ops}, headers=auth(ENGINE)), 413, "operations"
    )
    # Writes to read-only or insert-only datasets, and deletes without a filter.
    candle_insert = {"database": "mongodb", "collection": "candles", "records": [{"symbol": "BTCUSDT"}]}
    detail(http.post("/api/v1/data/insert", json=candle_insert, headers=auth(LEGACY)), 405, "collection")
    detail(
        http.put("/api/v1/mongodb/klines_15m", json={"filter": {"symbol": "X"}, "data": {}}, headers=auth(LEGACY)),
        405,
        "collection",
    )
    assert "non-empty filter" in detail(
        http.request("DELETE", "/api/v1/mysql/positions", json={"filter": {}}, headers=auth(ENGINE)), 422, "filter"
    )
    assert "$set" in detail(
        http.put(
            "/api/v1/mysql/positions",
            json={"filter": {"position_id": "x"}, "data": {"$unset": {"stop_loss": 1}}},
            headers=auth(ENGINE),
        ),
        422,
        "data",
    )
    with env.meta.engine.connect() as conn:  # none of the refused writes reached the table
        assert conn.execute(text("SELECT COUNT(*) FROM positions WHERE position_id = 'x'")).scalar() == 0


def test_writes_need_a_token_with_the_dataset_scope(http: httpx.Client, env: Env) -> None:
    body = {"database": "mysql", "collection": "daily_pnl", "records": [{"date": "2026-01-01", "daily_pnl": "1"}]}
    assert "required" in detail(http.post("/api/v1/data/insert", json=body), 401, "Authorization")
    assert "not valid" in detail(
        http.post("/api/v1/data/insert", json=body, headers=auth("wrong-token-0123456789")), 401, "Authorization"
    )
    msg = detail(http.post("/api/v1/data/insert", json=body, headers=auth(EXTRACTOR)), 403, "Authorization")
    assert "lacks scope 'pnl:write'" in msg and EXTRACTOR not in msg
    detail(http.post("/api/v1/data/insert", json=body, headers=auth(READER)), 403, "Authorization")
    detail(
        http.put("/api/v1/mysql/positions", json={"filter": {"position_id": "a"}, "data": {"status": "closed"}}),
        401,
        "Authorization",
    )
    with env.meta.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM daily_pnl WHERE date = '2026-01-01'")).scalar() == 0
    ok = http.post("/api/v1/data/insert", json=body, headers=auth(LEGACY))  # DM_API_TOKEN carries every scope
    assert ok.json()["inserted_count"] == 1
    with DMClient(env.url, token=READER) as client:
        with pytest.raises(Forbidden):
            client.upsert_daily_pnl("2026-01-02", "1")
        with pytest.raises(InvalidRequest):
            client.find("mysql", "positions", {"$where": "1"})
    with DMClient(env.url) as client, pytest.raises(Unauthorized):
        client.insert_klines("15m", [kline_record("BTCUSDT", T0)])


def test_reads_can_require_a_read_scope(env: Env) -> None:
    app = make_app(env.store, env.meta, env.settings, protect_reads=True)
    with serve(app) as url, httpx.Client(base_url=url) as c:
        detail(c.get("/api/v1/mysql/positions"), 401, "Authorization")
        detail(c.get("/positions"), 401, "Authorization")
        assert c.get("/api/v1/mysql/positions", headers=auth(READER)).status_code == 200
        assert c.get("/pnl/daily", headers=auth(LEGACY)).status_code == 200
        assert c.get("/health/liveness").status_code == 200


def test_batch_runs_each_operation_on_its_own(http: httpx.Client) -> None:
    ops = [
        {"type": "insert", "data": {"date": "2026-02-01", "daily_pnl": "5"}},
        {"type": "update", "filter": {"date": "2026-02-01"}, "data": {"daily_pnl": "6"}},
        {"type": "update", "filter": {"$where": "1"}, "data": {"daily_pnl": "7"}},
        {"type": "upsert"},
        {"type": "delete", "filter": {"date": "2026-02-01"}},
    ]
    results = http.post("/api/v1/mysql/daily_pnl/batch", json={"operations": ops}, headers=auth(ENGINE)).json()
    res = results["results"]
    assert [r["ok"] for r in res] == [True, True, False, False, True]
    assert res[0]["inserted_count"] == 1 and res[1]["modified_count"] == 1 and res[4]["deleted_count"] == 1
    assert "$where" in res[2]["error"] and "insert, update or delete" in res[3]["error"]
    # A batch must hold operations; an update's upsert must be a boolean.
    resp = http.post("/api/v1/mysql/daily_pnl/batch", json={"operations": []}, headers=auth(ENGINE))
    assert "non-empty array" in detail(resp, 422, "operations")
    bad = [{"type": "update", "filter": {"date": "2026-02-02"}, "data": {"daily_pnl": "1"}, "upsert": "yes"}]
    res = http.post("/api/v1/mysql/daily_pnl/batch", json={"operations": bad}, headers=auth(ENGINE)).json()["results"]
    assert res[0]["ok"] is False and "upsert: must be true or false" in res[0]["error"]


def test_updates_cannot_null_a_required_column(http: httpx.Client, env: Env) -> None:
    """``{"status": null}`` broke NOT NULL and came back as 409 "an open position already exists"."""
    rec = {"position_id": "null-1", "symbol": "XRPUSDT", "position_side": "BOTH", "status": "closed"}
    http.post(
        "/api/v1/data/insert",
        json={"database": "mysql", "collection": "positions", "records": [rec]},
        headers=auth(ENGINE),
    ).raise_for_status()
    for field in ("status", "symbol", "position_side", "position_id"):
        resp = http.put(
            "/api/v1/mysql/positions",
            json={"filter": {"position_id": "null-1"}, "data": {"$set": {field: None}}},
            headers=auth(ENGINE),
        )
        assert f"{field} cannot be null" in detail(resp, 422, "data")
    resp = http.put(
        "/api/v1/mysql/daily_pnl",
        json={"filter": {"date": "2026-05-01"}, "data": {"daily_pnl": None}, "upsert": True},
        headers=auth(ENGINE),
    )
    assert "daily_pnl cannot be null" in detail(resp, 422, "data")


def test_writes_to_read_only_datasets_are_405_whatever_the_token(http: httpx.Client) -> None:
    """A scoped token got 403 "lacks scope 'write'" (a scope that does not exist) instead of 405 read-only."""
    body = {"database": "mongodb", "collection": "candles", "records": [{"symbol": "BTCUSDT"}]}
    assert "read-only" in detail(
        http.post("/api/v1/data/insert", json=body, headers=auth(EXTRACTOR)), 405, "collection"
    )
    put = {"filter": {"symbol": "BTCUSDT"}, "data": {"trades": 1}}
    resp = http.put("/api/v1/mongodb/agg_trades", json=put, headers=auth(READER))
    assert "read-only" in detail(resp, 405, "collection")
    resp = http.post("/api/v1/mongodb/funding/batch", json={"operations": [{"type": "delete"}]}, headers=auth(ENGINE))
    assert "read-only" in detail(resp, 405, "collection")


def test_a_batch_cannot_carry_more_records_than_an_insert(http: httpx.Client, env: Env) -> None:
    """1,000 operations × 5,000 records each made the batch route a 5-million-record insert."""
    t = T0 + 20_000 * M15
    half = [kline_record("AVAXUSDT", t + i * M15, i=i) for i in range(2600)]
    ops = [{"type": "insert", "data": half}, {"type": "insert", "data": half}]
    resp = http.post("/api/v1/mongodb/klines_15m/batch", json={"operations": ops}, headers=auth(EXTRACTOR))
    assert "batch size limit of 5000" in detail(resp, 413, "operations")
    assert env.store.count("klines", "AVAXUSDT") == 0


def test_typed_routes_refuse_long_ids_and_too_many_days(http: httpx.Client) -> None:
    detail(http.get(f"/positions/{'p' * 65}"), 422, "position_id")
    days = [{"date": (dt.date(2000, 1, 1) + dt.timedelta(days=i)).isoformat(), "daily_pnl": "1"} for i in range(3661)]
    resp = http.post(
        "/api/v1/data/insert",
        json={"database": "mysql", "collection": "daily_pnl", "records": days},
        headers=auth(ENGINE),
    )
    assert resp.json()["inserted_count"] == 3661, resp.text
    assert "3660 days" in detail(http.get("/pnl/daily", params={"to": "2010-01-10"}), 422, "from")
    assert len(http.get("/pnl/daily", params={"from": "2000-01-01", "to": "2000-01-31"}).json()["days"]) == 31


# --- market data through the same query, health ------------------------------------------------------------


def test_market_datasets_are_readable_through_the_generic_query(http: httpx.Client, env: Env) -> None:
    candles = [
        {
            "_id": f"BTCUSDT:1m:{T0 + i * 60_000}",
            "symbol": "BTCUSDT",
            "interval": "1m",
            "open_time": T0 + i * 60_000,
            "close_time": T0 + i * 60_000 + 59_999,
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5 + i,
            "volume": 3.0,
            "quote_volume": 4.0,
            "taker_buy_volume": 1.0,
            "taker_buy_quote_volume": 1.0,
            "trades": 3,
            "source": "kline",
        }
        for i in range(10)
    ]
    CandleStore(env.store).sync_range("BTCUSDT", "1m", T0, T0 + 10 * 60_000, candles)
    flt = {"symbol": "BTCUSDT", "interval": "1m", "close": {"$gte": 5}}
    body = http.get(
        "/api/v1/mongodb/candles", params={"filter": json.dumps(flt), "sort": json.dumps({"open_time": -1})}
    ).json()
    assert [r["close"] for r in body["data"]] == [10.5, 9.5, 8.5, 7.5, 6.5, 5.5]
    assert "interval" in detail(
        http.get("/api/v1/mongodb/candles", params={"filter": json.dumps({"symbol": "BTCUSDT"})}), 422, "filter"
    )
    # klines_15m holds 15m klines only: asking it for another interval finds nothing, never 1h klines.
    http.post(
        "/api/v1/data/insert",
        json={
            "database": "mongodb",
            "collection": "klines_15m",
            "records": [kline_record("XRPUSDT", T0 + i * M15, i=i) for i in range(3)],
        },
        headers=auth(EXTRACTOR),
    ).raise_for_status()
    wrong = {"symbol": "XRPUSDT", "interval": "1h"}
    assert http.get("/api/v1/mongodb/klines_15m", params={"filter": json.dumps(wrong)}).json()["data"] == []
    right = {"symbol": "XRPUSDT", "interval": {"$in": ["15m", "1h"]}}
    got = http.get("/api/v1/mongodb/klines_15m", params={"filter": json.dumps(right), "limit": 3}).json()["data"]
    assert [r["interval"] for r in got] == ["15m"] * 3


def test_ne_and_in_on_the_time_field_are_applied(http: httpx.Client) -> None:
    """``$ne``/``$in`` on ``open_time`` were overwritten by the read window's range and silently ignored."""
    t = T0 + 12_000 * M15
    records = [kline_record("DOGEUSDT", t + i * M15, i=i) for i in range(6)]
    http.post(
        "/api/v1/data/insert",
        json={"database": "mongodb", "collection": "klines_15m", "records": records},
        headers=auth(EXTRACTOR),
    ).raise_for_status()

    def opens(flt: dict[str, Any]) -> list[str]:
        resp = http.get("/api/v1/mongodb/klines_15m", params={"filter": json.dumps({"symbol": "DOGEUSDT", **flt})})
        assert resp.status_code == 200, resp.text
        return [r["open_time"] for r in resp.json()["data"]]

    assert opens({"open_time": {"$ne": iso(t + 3 * M15)}}) == [iso(t + i * M15) for i in (0, 1, 2, 4, 5)]
    assert opens({"open_time": {"$in": [iso(t), iso(t + 5 * M15)]}}) == [iso(t), iso(t + 5 * M15)]
    assert opens({"timestamp": {"$in": [iso(t + M15)]}, "open_time": {"$gte": iso(t)}}) == [iso(t + M15)]


def test_kline_interval_filters_accept_the_spelling_inserts_accept(http: httpx.Client) -> None:
    """A record with ``interval: "m15"`` is stored as 15m; a filter with ``"m15"`` found nothing."""
    t = T0 + 14_000 * M15
    records = [{**kline_record("BNBUSDT", t + i * M15, i=i), "interval": "m15"} for i in range(2)]
    body = http.post(
        "/api/v1/data/insert",
        json={"database": "mongodb", "collection": "klines_m15", "records": records},
        headers=auth(EXTRACTOR),
    ).json()
    assert body["inserted_count"] == 2, body

    def count(flt: dict[str, Any]) -> int:
        params = {"filter": json.dumps({"symbol": "BNBUSDT", **flt})}
        return len(http.get("/api/v1/mongodb/klines_m15", params=params).json()["data"])

    assert count({"interval": "m15"}) == 2 and count({"interval": "15m"}) == 2
    assert count({"interval": {"$in": ["m15"]}}) == 2 and count({"interval": {"$ne": "m15"}}) == 0
    assert count({"interval": "1h"}) == 0


def test_health_keeps_the_platform_up_when_dagster_is_down(http: httpx.Client, env: Env) -> None:
    ready = http.get("/health/readiness")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded" and ready.json()["degraded"] == ["dagster"]
    assert ready.json()["down"] == []
    # The routes that need Dagster say so.
    start = {"pairs": ["BTCUSDT"], "period": "1m", "start": T0, "end": T0 + 86_400_000}
    assert "Dagster" in detail(http.post("/backfill/start", json=start, headers=auth(LEGACY)), 503, "dagster")
    http.post(
        "/api/v1/data/insert",
        json={
            "database": "mongodb",
            "collection": "klines_1h",
            "records": [kline_record("DOTUSDT", T0, "1h", 3_600_000)],
        },
        headers=auth(EXTRACTOR),
    ).raise_for_status()
    dbs = http.get("/health/databases").json()
    assert dbs["mongodb"]["connected"] and dbs["metadata"]["connected"]
    assert dbs["mongodb"]["counts"]["klines"] > 0 and "positions" in dbs["metadata"]["counts"]
    assert dbs["mongodb"]["latency_ms"] >= 0
    root = http.get("/").json()
    assert root["service"] == "market-data-manager" and root["docs"] == "/docs" and root["version"]


def test_an_unmigrated_metadata_database_says_so_and_how_to_fix_it(env: Env, tmp_path: Path) -> None:
    empty = MetadataStore(f"sqlite:///{tmp_path / 'empty.db'}")
    app = make_app(env.store, empty, env.settings)
    try:
        with serve(app) as url, httpx.Client(base_url=url) as c:
            ready = c.get("/health/readiness")
            assert ready.status_code == 503 and ready.json()["down"] == ["metadata"]
            check = next(x for x in ready.json()["checks"] if x["name"] == "metadata")
            assert "never created" in check["error"] and "python -m dm_resources.metadata upgrade" in check["error"]
            for path in ("/api/v1/mysql/positions", "/positions", "/pnl/daily"):
                msg = detail(c.get(path), 503, "metadata")
                assert "python -m dm_resources.metadata upgrade" in msg, msg
    finally:
        empty.close()
    behind = MetadataStore(f"sqlite:///{tmp_path / 'behind.db'}")
    behind.migrate("0001")  # created before the positions tables existed
    try:
        with serve(make_app(env.store, behind, env.settings)) as url, httpx.Client(base_url=url) as c:
            check = next(x for x in c.get("/health/readiness").json()["checks"] if x["name"] == "metadata")
            assert f"at revision 0001, this code needs {head_revision()}" in check["error"]
            assert "python -m dm_resources.metadata upgrade" in detail(c.get("/positions/open"), 503, "metadata")
    finally:
        behind.close()
    # A revision this code does not know is newer (a rolling deploy migrated first): still ready.
    ahead = MetadataStore(f"sqlite:///{tmp_path / 'ahead.db'}")
    ahead.migrate()
    with ahead.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    try:
        with serve(make_app(env.store, ahead, env.settings)) as url, httpx.Client(base_url=url) as c:
            assert c.get("/health/readiness").json()["down"] == []
    finally:
        ahead.close()


# --- the client --------------------------------------------------------------------------------------------


def test_clients_send_decimals_and_datetimes_as_the_contract_expects(env: Env) -> None:
    """Money as Decimal and times as datetime (what a trade engine holds) raised TypeError in httpx's JSON encoder."""
    opened = {
        "position_id": "dec-1",
        "entry_price": Decimal("27123.5"),
        "entry_time": dt.datetime(2026, 3, 10, tzinfo=dt.UTC),
    }
    closed = {"final_realized_pnl": Decimal("40.25"), "closed_at": dt.datetime(2026, 3, 10, 13, tzinfo=dt.UTC)}
    flt = {"symbol": "DOTUSDT", "position_side": "LONG", "status": "open"}
    with DMClient(env.url, token=ENGINE) as c:
        assert c.upsert_position(flt, opened).upserted_count == 1
        assert c.close_position("DOTUSDT", "LONG", closed).modified_count == 1
        row = c.position("dec-1")
    assert row.entry_price == "27123.5" and row.final_realized_pnl == "40.25"
    assert row.closed_at is not None and row.closed_at.startswith("2026-03-10T13:00:00")

    async def run() -> Any:
        async with AsyncDMClient(env.url, token=ENGINE) as c:
            return await c.upsert_daily_pnl(
                dt.date(2026, 6, 1), Decimal("1.10"), dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
            )

    assert asyncio.run(run()).upserted_count == 1


def test_async_client_reads_and_writes(env: Env) -> None:
    async def run() -> tuple[Any, ...]:
        async with AsyncDMClient(env.url, token=EXTRACTOR) as c:
            ins = await c.insert_klines("1h", [kline_record("ADAUSDT", T0, "1h", 3_600_000)])
            latest = await c.latest_kline("ADAUSDT", "1h")
            live = await c.liveness()
            ready = await c.readiness()
            return ins, latest, live, ready

    ins, latest, live, ready = asyncio.run(run())
    assert ins.inserted_count == 1 and latest is not None and latest["close_time"] == iso(T0 + 3_600_000 - 1)
    assert live == {"status": "ok"} and ready["status"] == "degraded"


def test_sync_client_market_and_health_methods(env: Env) -> None:
    candles = [
        {
            "_id": f"ETHUSDT:1m:{T0 + i * 60_000}",
            "symbol": "ETHUSDT",
            "interval": "1m",
            "open_time": T0 + i * 60_000,
            "close_time": T0 + i * 60_000 + 59_999,
            **dict.fromkeys(("open", "high", "low", "close"), 2.0),
            **dict.fromkeys(("volume", "quote_volume", "taker_buy_volume", "taker_buy_quote_volume"), 1.0),
            "trades": 1,
            "source": "kline",
        }
        for i in range(5)
    ]
    CandleStore(env.store).sync_range("ETHUSDT", "1m", T0, T0 + 5 * 60_000, candles)
    with DMClient(env.url) as c:
        assert c.root()["api"] == "/api/v1"
        assert c.databases()["metadata"]["connected"] is True
        page = c.candles("ETHUSDT", "1m", start=T0, end=T0 + 5 * 60_000)
        assert [r["open_time"] for r in page["rows"]] == [d["open_time"] for d in candles]
        assert c.trades("ETHUSDT", start=T0, end=T0 + 60_000)["rows"] == []
        assert c.funding("ETHUSDT", start=T0, end=T0 + 86_400_000)["rows"] == []
        assert "rows" in c.analytics("volatility", "ETHUSDT", "1m")
        rows = c.query("mongodb", "candles", filter={"symbol": "ETHUSDT", "interval": "1m"}, limit=2)
        assert [r["open_time"] for r in rows.data] == [T0, T0 + 60_000] and rows.pagination.has_more
        with pytest.raises(NotFound):
            c.candles("NOPEUSDT")
