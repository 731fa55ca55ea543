"""Every row of docs/PLATFORM_CONTRACT.md, replayed as the service sends it, over real HTTP.

Each test is one row (``@row("TE-04")``): the request as the service's client builds it (path,
query, body, ``X-Petrosa-Service`` + Bearer, or nothing for the extractor), its retry where the
client retries (the first answer lost), and an assertion on exactly what the client reads. The
last test checks that every row of the document has its replay here.

The API runs twice over the same stores: ``enforce`` (the default) and ``audit``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from api.app import create_app
from api.deps import ApiSettings
from api.testing import serve
from dm_resources.embedded import free_port
from dm_resources.metadata.ledger import LedgerStore, verify_chain
from dm_resources.metadata.store import MetadataStore
from dm_resources.metadata.write_audit import recent_writes
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings
from tests.conftest import _drop_mysql_database, _fresh_mysql_database, metadata_backends
from tests.test_api_routes import candle_docs, put_candles

CONTRACT = Path(__file__).resolve().parents[1] / "docs" / "PLATFORM_CONTRACT.md"
ROWS: dict[str, str] = {}

ENGINE, TA_BOT, REALTIME = "petrosa-tradeengine", "petrosa-bot-ta-analysis", "petrosa-realtime-strategies"
TOKENS = {
    ENGINE: "engine-service-token-0123456789",
    TA_BOT: "ta-bot-service-token-0123456789",
    REALTIME: "realtime-service-token-0123456789",
}
EXTRACTOR_TOKEN = "extractor-api-token-0123456789"  # DM_API_TOKENS: the migration path for a client without a name
M15 = 15 * 60_000
DAY0 = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)


def row(row_id: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def mark(fn: Callable[..., None]) -> Callable[..., None]:
        ROWS[row_id] = fn.__name__
        return fn

    return mark


@dataclass
class Env:
    enforce: str
    audit: str
    store: MongoStore
    meta: MetadataStore

    def service(self, name: str, *, mode: str = "enforce") -> httpx.Client:
        headers = {"X-Petrosa-Service": name, "Authorization": f"Bearer {TOKENS[name]}"}
        return httpx.Client(base_url=getattr(self, mode), headers=headers, timeout=60)

    def anonymous(self, *, mode: str = "enforce", headers: dict[str, str] | None = None) -> httpx.Client:
        return httpx.Client(base_url=getattr(self, mode), headers=headers or {}, timeout=60)


def services_env(
    request: pytest.FixtureRequest, mongo_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """The API in enforce and in audit mode over one SecantusDB database and one metadata database."""
    db = f"s_{uuid.uuid4().hex[:10]}"
    store = MongoStore(mongo_server.url, db, retry_attempts=2, server_selection_timeout_ms=3000)
    store.ensure_indexes()
    mysql_db: str | None = None
    if request.param == "mysql":
        meta_url, mysql_db = _fresh_mysql_database(os.environ["DM_TEST_MYSQL_URL"])
    else:
        meta_url = f"sqlite:///{tmp_path_factory.mktemp('services') / 'metadata.db'}"
    meta = MetadataStore(meta_url)
    meta.migrate()
    put_candles(store, candle_docs("BTCUSDT", "15m", M15, DAY0, 40))

    def app(mode: str) -> Any:
        settings = load_settings(
            mongo_url=store.url,
            mongo_db=store.db_name,
            metadata_url=meta_url,
            symbols=["BTCUSDT", "ETHUSDT"],
            dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
            service_tokens=json.dumps(TOKENS),
            auth_mode=mode,
        )
        api = ApiSettings(tokens=SecretStr(json.dumps({EXTRACTOR_TOKEN: ["klines:write", "read"]})))
        return create_app(settings, mongo=store, meta=meta, api_settings=api)

    try:
        with serve(app("enforce")) as enforce, serve(app("audit")) as audit:
            yield Env(enforce, audit, store, meta)
    finally:
        store.client.drop_database(db)
        store.close()
        meta.close()
        if mysql_db is not None:
            _drop_mysql_database(os.environ["DM_TEST_MYSQL_URL"], mysql_db)


env = pytest.fixture(scope="module", params=metadata_backends(), name="env")(services_env)


def retried(client: httpx.Client, method: str, path: str, **kw: Any) -> tuple[httpx.Response, httpx.Response]:
    """The request and its retry, as a client sends it again when the first answer was lost."""
    return client.request(method, path, **kw), client.request(method, path, **kw)


def position(pid: str, symbol: str = "BTCUSDT", side: str = "LONG", **kw: Any) -> dict[str, Any]:
    """A position as the trade engine's dict carries it (with the fields its MySQL copy used to drop)."""
    return {
        "position_id": pid,
        "strategy_id": "momentum_v2",
        "exchange": "binance",
        "symbol": symbol,
        "position_side": side,
        "entry_price": "27123.5",
        "quantity": "0.015",
        "entry_time": "2026-03-01T10:00:00+00:00",
        "status": "open",
        "stop_loss": "26500",
        "take_profit": "28000",
        "entry_commission": "0.0162",
        "fee_status": "confirmed",
        "stop_loss_order_id": "sl-1",
        "take_profit_order_id": "tp-1",
        "metadata": {"signal_id": "sig-1"},
        **kw,
    }


def count(meta: MetadataStore, sql: str) -> int:
    with meta.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar() or 0)


# --- trade engine ------------------------------------------------------------------------------


@row("TE-01")
def test_engine_health_check_reads_a_status_it_accepts(env: Env) -> None:
    with env.service(ENGINE) as c:
        body = c.get("/health/readiness").json()
    assert body["status"].lower() in {"ok", "ready", "healthy", "up", "available"}
    assert body["status"] == "healthy"


@row("TE-02")
def test_engine_reads_every_open_position_by_following_next_cursor(env: Env) -> None:
    with env.service(ENGINE) as c:
        for i in range(7):
            assert (
                c.post("/api/v1/trading/positions", json=position(f"cur-{i}", symbol=f"CUR{i}USDT")).status_code == 201
            )
        rows: list[dict[str, Any]] = []
        cursor: str | None = ""
        pages = 0
        while True:  # the engine's loop, verbatim in behaviour: status=open, limit, cursor until none
            params: dict[str, Any] = {"status": "open", "limit": 3}
            if cursor:
                params["cursor"] = cursor
            response = c.get("/api/v1/trading/positions", params=params).json()
            rows.extend(r for r in response.get("data", []) if isinstance(r, dict))
            pages += 1
            cursor = str(response["next_cursor"]) if response.get("next_cursor") else None
            if cursor is None:
                break
    ids = [r["position_id"] for r in rows]
    assert {f"cur-{i}" for i in range(7)} <= set(ids) and len(ids) == len(set(ids)) and pages >= 3
    assert all(r["status"] == "open" for r in rows)


@row("TE-03")
def test_engine_reads_one_position_and_a_missing_one_is_404(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.post("/api/v1/trading/positions", json=position("get-1", symbol="GETUSDT"))
        response = c.get("/api/v1/trading/positions/get-1").json()
        data = response.get("data", response)
        assert data["position_id"] == "get-1" and data["entry_price"] == "27123.5" and data["fee_status"] == "confirmed"
        assert c.get("/api/v1/trading/positions/no-such-position").status_code == 404


@row("TE-04")
def test_engine_create_retried_after_a_lost_answer_is_409_already_exists_and_one_row(env: Env) -> None:
    with env.service(ENGINE) as c:
        first, again = retried(c, "POST", "/api/v1/trading/positions", json=position("create-1", symbol="NEWUSDT"))
    assert first.status_code == 201 and first.json()["position_id"] == "create-1"
    assert again.status_code == 409  # the engine: "already exists", success
    assert count(env.meta, "SELECT COUNT(*) FROM positions WHERE position_id = 'create-1'") == 1


@row("TE-05")
def test_engine_patches_risk_orders_and_closes_through_the_open_list(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.post("/api/v1/trading/positions", json=position("patch-1", symbol="PATUSDT", side="SHORT"))
        first, again = retried(c, "PATCH", "/api/v1/trading/positions/patch-1", json={"stop_loss": "28500"})
        assert first.status_code == again.status_code == 200
        # close_position: find the open row of symbol + side in the open list, then patch it
        rows = c.get("/api/v1/trading/positions", params={"status": "open", "limit": 500}).json()["data"]
        (target,) = [r for r in rows if r["symbol"] == "PATUSDT" and r["position_side"] == "SHORT"]
        closing = {"status": "closed", "exit_price": "26000", "pnl": "16.9", "closed_at": "2026-03-01T12:00:00Z"}
        assert c.patch(f"/api/v1/trading/positions/{target['position_id']}", json=closing).status_code == 200
        stored = c.get("/api/v1/trading/positions/patch-1").json()
    assert stored["status"] == "closed" and stored["stop_loss"] == "28500" and stored["exit_price"] == "26000"


@row("TE-06")
def test_engine_daily_pnl_missing_is_404_and_then_a_float(env: Env) -> None:
    with env.service(ENGINE) as c:
        assert c.get("/api/v1/trading/daily-pnl/2026-02-01").status_code == 404
        c.put("/api/v1/trading/daily-pnl/2026-02-01", json={"daily_pnl": 3.25}).raise_for_status()
        assert float(c.get("/api/v1/trading/daily-pnl/2026-02-01").json()["daily_pnl"]) == 3.25


@row("TE-07")
def test_engine_stores_an_absolute_daily_pnl_and_a_retry_changes_nothing(env: Env) -> None:
    body = {"daily_pnl": -12.5, "updated_at": dt.datetime.now(dt.UTC).isoformat()}
    with env.service(ENGINE) as c:
        first, again = retried(c, "PUT", "/api/v1/trading/daily-pnl/2026-02-02", json=body)
        assert first.status_code == again.status_code == 200
        assert float(c.get("/api/v1/trading/daily-pnl/2026-02-02").json()["daily_pnl"]) == -12.5
    assert count(env.meta, "SELECT COUNT(*) FROM daily_pnl WHERE date = '2026-02-02'") == 1


@row("TE-08")
def test_engine_upserts_a_position_under_the_database_name_mongodb(env: Env) -> None:
    record = position("upsert-1", symbol="UPSUSDT")
    body = {"filter": {"position_id": "upsert-1"}, "data": record, "upsert": True}
    with env.service(ENGINE) as c:
        first, again = retried(c, "PUT", "/api/v1/mongodb/positions", json=body)
    assert first.status_code == again.status_code == 200
    a, b = first.json(), again.json()
    assert a["failed"] == 0 and a["upserted"] is True and a["upserted_count"] == 1 and a["upserted_id"] == "upsert-1"
    assert b["failed"] == 0 and b["upserted"] is False and b["modified_count"] == 1  # idempotent duplicate
    assert count(env.meta, "SELECT COUNT(*) FROM positions WHERE position_id = 'upsert-1'") == 1


@row("TE-09")
def test_engine_legacy_update_counts_an_identical_repeat_as_done(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.post("/api/v1/trading/positions", json=position("legacy-1", symbol="LEGUSDT"))
        body = {"filter": {"position_id": "legacy-1"}, "data": {"unrealized_pnl": "1.5"}, "upsert": False}
        first, again = retried(c, "PUT", "/api/v1/mysql/positions", json=body)
    for resp in (first, again):
        out = resp.json()
        assert int(out.get("updated_count", out.get("modified_count", 0)) or 0) > 0  # the legacy reader
        assert int(out.get("modified_count", 0)) > 0  # what the client wrapper passes on
    assert first.json()["changed_count"] == 1 and again.json()["changed_count"] == 0


def _dry_run(c: httpx.Client, pid: str, dry_id: str) -> dict[str, Any]:
    before = {"status": "open", "close_reason": None, "pnl_unknown": False}
    after = {"status": "superseded", "close_reason": "phantom_superseded", "pnl_unknown": True}
    body = {
        "adjustment_id": dry_id,
        "applied_at": "2026-03-02T09:00:00Z",
        "applied_by": "ops-agent",
        "approved_by": "reviewer",
        "target_table": "positions",
        "target_key": pid,
        "before": before,
        "after": after,
        "reason_code": "phantom_superseded",
        "evidence_ref": "sha256:feedface",
        "run_mode": "dry_run",
    }
    resp = c.post("/api/v1/ledger/adjustments", json=body)
    assert resp.status_code in (200, 201), resp.text
    return body


@row("TE-10")
def test_engine_supersedes_a_phantom_row_once_even_when_retried(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.post("/api/v1/trading/positions", json=position("phantom-1", symbol="PHAUSDT")).raise_for_status()
        _dry_run(c, "phantom-1", "dry-te10")
        body = {
            "id": "phantom-1",
            "expected_before": {"id": "phantom-1", "status": "open", "entry_price": "27123.5"},
            "reason_code": "phantom_superseded",
            "evidence_ref": "sha256:feedface",
            "applied_by": "ops-agent",
            "approved_by": "reviewer",
            "dry_run_adjustment_id": "dry-te10",
        }
        first, again = retried(c, "POST", "/api/v1/ledger/positions/supersede", json=body)
        assert first.status_code == again.status_code == 200
        assert first.json()["adjustment_id"] == again.json()["adjustment_id"] and again.json()["replayed"] is True
        stored = c.get("/api/v1/trading/positions/phantom-1").json()
    assert stored["status"] == "superseded" and stored["pnl_unknown"] is True
    applies = LedgerStore(env.meta).adjustments(target_key="phantom-1")
    assert [a["run_mode"] for a in applies] == ["dry_run", "apply"]
    assert applies[1]["service"] == ENGINE and verify_chain(LedgerStore(env.meta).chain())


def _exchange_day(day: str, *, final: bool = False) -> dict[str, Any]:
    return {
        "day": day,
        "source_run_id": uuid.uuid4().hex,
        "is_final": final,
        "row_count": 1,
        "first_income_time_ms": DAY0,
        "last_income_time_ms": DAY0 + 1000,
        "rows": [
            {
                "symbol": "BTCUSDT",
                "asset": "USDT",
                "income_by_type": {"REALIZED_PNL": "-10.00", "COMMISSION": "-2.50", "FUNDING_FEE": "-0.10"},
            }
        ],
        "wallet_balance": "1000.00000001",
        "balance_as_of_ms": DAY0 + 86_400_000,
        "income_after_day_end": {},
    }


@row("TE-11")
def test_engine_publishes_an_exchange_day_and_its_retry_is_the_same_revision(env: Env) -> None:
    body = _exchange_day("2026-02-03")
    with env.service(ENGINE) as c:
        first, again = retried(c, "PUT", "/api/v1/ledger/exchange-daily/2026-02-03", json=body)
        final = c.put("/api/v1/ledger/exchange-daily/2026-02-03", json={**body, "is_final": True}).json()
    assert first.json()["created"] is True and again.json() == {**first.json(), "created": False}
    assert final["revision"] == 2


@row("TE-12")
def test_engine_publishes_the_exchange_positions_snapshot(env: Env) -> None:
    as_of = DAY0 + 5_000
    body = {
        "as_of_ms": as_of,
        "source_run_id": "run-1",
        "rows": [
            {
                "symbol": "ETHUSDT",
                "position_side": "SHORT",
                "quantity": "-2",
                "entry_price": "12",
                "mark_price": "11",
                "unrealized_pnl": "2",
            }
        ],
    }
    with env.service(ENGINE) as c:
        first, again = retried(c, "PUT", f"/api/v1/ledger/exchange-positions/{as_of}", json=body)
        other = c.put(f"/api/v1/ledger/exchange-positions/{as_of}", json={**body, "rows": []})
    assert first.json()["created"] is True and again.json()["created"] is False
    assert other.status_code == 409  # a snapshot is immutable


@row("TE-13")
def test_tieout_reads_days_and_the_cumulative_variance(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.put("/api/v1/ledger/exchange-daily/2026-02-04", json=_exchange_day("2026-02-04")).raise_for_status()
        c.put("/api/v1/trading/daily-pnl/2026-02-04", json={"daily_pnl": "-12.5"}).raise_for_status()
        c.put("/api/v1/ledger/exchange-daily/2026-02-05", json=_exchange_day("2026-02-05")).raise_for_status()
        c.put("/api/v1/trading/daily-pnl/2026-02-05", json={"daily_pnl": "-11"}).raise_for_status()
        out = c.get("/api/v1/ledger/tieout", params={"from": "2026-02-04", "to": "2026-02-06"}).json()
    days = {d["day"]: d for d in out["days"]}
    assert days["2026-02-04"]["status"] == "tied" and days["2026-02-04"]["unexplained"] == "0"
    assert days["2026-02-05"]["status"] == "break" and days["2026-02-05"]["unexplained"] == "1.5"
    assert days["2026-02-06"]["status"] == "no_data" and out["cumulative_variance"] == "1.5"


@row("TE-14")
def test_positions_tieout_names_the_phantom_rows(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.post("/api/v1/trading/positions", json=position("ghost-1", symbol="GHOUSDT")).raise_for_status()
        out = c.get("/api/v1/ledger/positions-tieout").json()
    assert out["as_of_ms"] is not None
    assert any(r["symbol"] == "GHOUSDT" and "ghost-1" in r["position_ids"] for r in out["phantom_rows"])


@row("TE-15")
def test_a_dry_run_adjustment_is_chained_and_its_retry_answers_it(env: Env) -> None:
    with env.service(ENGINE) as c:
        body = _dry_run(c, "any-row", "dry-te15")
        again = c.post("/api/v1/ledger/adjustments", json=body)
    assert again.status_code == 200 and again.json()["replayed"] is True and again.json()["row_hash"]


@row("TE-16")
def test_adjustments_read_back_in_chain_order(env: Env) -> None:
    with env.service(ENGINE) as c:
        _dry_run(c, "row-te16", "dry-te16")
        rows = c.get("/api/v1/ledger/adjustments", params={"target_key": "row-te16"}).json()
    assert [r["adjustment_id"] for r in rows] == ["dry-te16"] and rows[0]["prev_hash"] is not None


@row("TE-17")
def test_engine_boot_probe_writes_its_sentinel(env: Env) -> None:
    probe = f"boot-probe-te-0-{uuid.uuid4().hex[:8]}"
    record = {"_id": probe, "probe_id": probe, "created_at": dt.datetime.now(dt.UTC).isoformat()}
    body = {"database": "mongodb", "collection": "tradeengine_boot_probes", "records": [record]}
    with env.service(ENGINE) as c:
        first, again = retried(c, "POST", "/api/v1/data/insert", json=body)
    assert int(first.json()["inserted_count"]) > 0 and int(again.json()["inserted_count"]) > 0  # never "placeholder"


@row("TE-18")
def test_engine_boot_probe_reads_its_sentinel_back(env: Env) -> None:
    probe = f"boot-probe-te-1-{uuid.uuid4().hex[:8]}"
    record = {"_id": probe, "probe_id": probe, "created_at": dt.datetime.now(dt.UTC).isoformat()}
    with env.service(ENGINE) as c:
        c.post(
            "/api/v1/data/insert",
            json={"database": "mongodb", "collection": "tradeengine_boot_probes", "records": [record]},
        )
        query = {
            "database": "mongodb",
            "collection": "tradeengine_boot_probes",
            "filter": {"probe_id": probe},
            "limit": 1,
        }
        data = c.post("/api/v1/data/query", json=query).json()["data"]
    assert data and data[0]["probe_id"] == probe


@row("TE-19")
def test_engine_boot_probe_deletes_probes_older_than_a_day(env: Env) -> None:
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=30)).isoformat()
    fresh = dt.datetime.now(dt.UTC).isoformat()
    records = [
        {"_id": "probe-old-1", "probe_id": "probe-old-1", "created_at": old},
        {"_id": "probe-old-2", "probe_id": "probe-old-2", "created_at": old},
        {"_id": "probe-now", "probe_id": "probe-now", "created_at": fresh},
    ]
    cutoff = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=24)).isoformat()
    with env.service(ENGINE) as c:
        c.post(
            "/api/v1/data/insert",
            json={"database": "mongodb", "collection": "tradeengine_boot_probes", "records": records},
        )
        body = {"filter": {"created_at": {"$lt": cutoff}, "_id": {"$ne": "probe-now"}}}
        deleted = c.request("DELETE", "/api/v1/mongodb/tradeengine_boot_probes", json=body).json()["deleted_count"]
        left = c.get(
            "/api/v1/mongodb/tradeengine_boot_probes", params={"filter": json.dumps({"probe_id": "probe-now"})}
        )
    assert deleted >= 2 and left.json()["data"][0]["probe_id"] == "probe-now"


@row("TE-20")
def test_engine_reads_trading_configs_and_leverage(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.put(
            "/api/v1/mongodb/leverage_status",
            json={
                "filter": {"symbol": "BTCUSDT"},
                "data": {"configured_leverage": 10, "actual_leverage": 5},
                "upsert": True,
            },
        )
        for collection, flt in (("leverage_status", {"symbol": "BTCUSDT"}), ("leverage_status", None)):
            body: dict[str, Any] = {
                "database": "mongodb",
                "collection": collection,
                "limit": 1000 if flt is None else 1,
            }
            if flt is not None:
                body["filter"] = flt
            doc = c.post("/api/v1/data/query", json=body).json()["data"][0]
            doc["id"] = str(doc.pop("_id", ""))  # what the engine does before building its model
            assert doc["configured_leverage"] == 10 and doc["id"]
        empty = c.post(
            "/api/v1/data/query",
            json={
                "database": "mongodb",
                "collection": "trading_configs_symbol_side",
                "filter": {"symbol": "ETHUSDT", "side": "LONG"},
                "limit": 1,
            },
        )
    assert empty.json()["data"] == []


@row("TE-21")
def test_engine_upserts_trading_configs_and_a_repeat_still_reads_as_done(env: Env) -> None:
    cases = [
        ("trading_configs_global", {}),
        ("trading_configs_symbol", {"symbol": "BTCUSDT"}),
        ("trading_configs_symbol_side", {"symbol": "BTCUSDT", "side": "LONG"}),
        ("leverage_status", {"symbol": "ETHUSDT"}),
    ]
    with env.service(ENGINE) as c:
        for collection, flt in cases:
            data = {**flt, "leverage": 10, "updated_at": "2026-03-01T00:00:00+00:00"}
            body = {"filter": flt, "data": data, "upsert": True}
            first, again = retried(c, "PUT", f"/api/v1/mongodb/{collection}", json=body)
            for r in (first.json(), again.json()):
                assert r["modified_count"] > 0 or r["upserted_count"] > 0, (collection, r)
            got = c.post(
                "/api/v1/data/query", json={"database": "mongodb", "collection": collection, "filter": flt, "limit": 1}
            ).json()
            assert got["data"][0]["leverage"] == 10


@row("TE-22")
def test_engine_deletes_trading_configs(env: Env) -> None:
    with env.service(ENGINE) as c:
        flt = {"symbol": "SOLUSDT", "side": "SHORT"}
        c.put(
            "/api/v1/mongodb/trading_configs_symbol_side", json={"filter": flt, "data": {"leverage": 3}, "upsert": True}
        )
        out = c.request("DELETE", "/api/v1/mongodb/trading_configs_symbol_side", json={"filter": flt}).json()
        assert out["deleted_count"] > 0
        c.put("/api/v1/mongodb/trading_configs_global", json={"filter": {}, "data": {"leverage": 2}, "upsert": True})
        assert (
            c.request("DELETE", "/api/v1/mongodb/trading_configs_global", json={"filter": {}}).json()["deleted_count"]
            == 1
        )


@row("TE-23")
def test_engine_adds_a_trading_config_audit_record(env: Env) -> None:
    audit = {
        "symbol": "BTCUSDT",
        "side": "LONG",
        "action": "update",
        "changed_by": "engine",
        "timestamp": "2026-03-01T00:00:00Z",
    }
    with env.service(ENGINE) as c:
        out = c.post(
            "/api/v1/data/insert",
            json={"database": "mongodb", "collection": "trading_configs_audit", "records": [audit]},
        ).json()
        trail = c.post(
            "/api/v1/data/query",
            json={
                "database": "mongodb",
                "collection": "trading_configs_audit",
                "filter": {"symbol": "BTCUSDT"},
                "sort": {"timestamp": -1},
                "limit": 100,
            },
        ).json()
    assert out["inserted_count"] > 0 and trail["data"][0]["changed_by"] == "engine"


# --- TA bot -------------------------------------------------------------------------------------


@row("TA-01")
def test_ta_bot_starts_only_on_status_healthy(env: Env) -> None:
    with env.service(TA_BOT) as c:
        health = c.get("/health/readiness").json()
    assert health.get("status") == "healthy"


@row("TA-02")
def test_ta_bot_reads_candles_newest_first_as_a_dataframe(env: Env) -> None:
    params = {"pair": "BTCUSDT", "period": "15m", "limit": 25, "offset": 0, "sort_order": "desc"}
    with env.service(TA_BOT) as c:
        result = c.get("/data/candles", params=params).json()
    df = pd.DataFrame(result["data"])  # fetch_candles, as the bot does it
    assert all(col in df.columns for col in ["timestamp", "open", "high", "low", "close", "volume"])
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    for col in ("open", "high", "low", "close", "volume"):
        df[col] = df[col].astype(float)
    assert len(df) == 25 and df["timestamp"].is_monotonic_decreasing
    df = df.sort_values("timestamp").reset_index(drop=True)
    assert df["timestamp"].iloc[-1] == pd.Timestamp(DAY0 + 39 * M15, unit="ms", tz="UTC")


@row("TA-03")
def test_ta_bot_persists_signals_one_and_a_batch_with_validate(env: Env) -> None:
    signal = {
        "symbol": "BTCUSDT",
        "strategy_id": "rsi_extreme_reversal",
        "signal": "BUY",
        "confidence": 0.82,
        "period": "15m",
        "timestamp": "2026-03-01T10:15:00Z",
        "metadata": {"rsi": 12.5},
        "decision_id": "dec-ta03",
    }
    batch = [signal, {**signal, "timestamp": "2026-03-01T10:30:00Z", "signal": "SELL"}]
    with env.service(TA_BOT) as c:
        one, one_again = retried(
            c, "POST", "/api/v1/mongodb/signals", params={"validate": "true"}, json={"data": signal}
        )
        many = c.post("/api/v1/mongodb/signals", params={"validate": "true"}, json={"data": batch}).json()
    assert one.json()["inserted_count"] > 0 and one_again.json()["inserted_count"] > 0
    assert many["inserted_count"] == len(batch)
    assert env.store.db["signals"].count_documents({"strategy_id": "rsi_extreme_reversal"}) == 2


@row("TA-04")
def test_ta_bot_config_client_connects_on_liveness(env: Env) -> None:
    with env.anonymous() as c:
        assert c.get("/health/liveness").status_code == 200


APP_CONFIG = {
    "enabled_strategies": ["rsi_extreme_reversal", "momentum_pulse"],
    "symbols": ["BTCUSDT", "ETHUSDT"],
    "candle_periods": ["15m", "1h"],
    "min_confidence": 0.6,
    "max_confidence": 0.95,
    "max_positions": 10,
    "position_sizes": [100, 200, 500, 1000],
}


@row("TA-05")
def test_ta_bot_reads_the_application_config(env: Env) -> None:
    with env.service(TA_BOT) as c:
        data = c.get("/api/v1/config/application").json()
    data = data["data"] if isinstance(data, dict) and "data" in data and data.get("success") else data
    assert set(APP_CONFIG) <= set(data) and "version" in data and "source" in data


@row("TA-06")
def test_ta_bot_sets_the_application_config(env: Env) -> None:
    with env.service(TA_BOT) as c:
        first, again = retried(
            c, "POST", "/api/v1/config/application", json={**APP_CONFIG, "changed_by": "ta-bot", "reason": "boot"}
        )
        assert first.status_code == again.status_code == 200
        assert c.get("/api/v1/config/application").json()["symbols"] == ["BTCUSDT", "ETHUSDT"]
        audit = c.get("/api/v1/config/audit/application", params={"limit": 100}).json()
    assert len(audit) == 1  # the retry stored no second version


@row("TA-07")
def test_ta_bot_reads_a_strategy_config_with_its_symbol_override(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post(
            "/api/v1/config/strategies/ta07",
            json={"parameters": {"rsi_period": 14, "oversold": 30}, "changed_by": "ta-bot"},
        )
        c.post(
            "/api/v1/config/strategies/ta07?symbol=ETHUSDT",
            json={"parameters": {"oversold": 25}, "changed_by": "ta-bot"},
        )
        data = c.get("/api/v1/config/strategies/ta07?symbol=ETHUSDT").json()
    assert (
        data["parameters"] == {"rsi_period": 14, "oversold": 25}
        and data["is_override"] is True
        and data["version"] == 1
    )


@row("TA-08")
def test_ta_bot_sets_a_strategy_config(env: Env) -> None:
    with env.service(TA_BOT) as c:
        first, again = retried(
            c,
            "POST",
            "/api/v1/config/strategies/ta08",
            json={"parameters": {"period": 20}, "changed_by": "ta-bot", "reason": None},
        )
        assert first.status_code == again.status_code == 200
        assert c.get("/api/v1/config/strategies/ta08").json()["version"] == 1


@row("TA-09")
def test_ta_bot_lists_strategy_ids(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post("/api/v1/config/strategies/ta09", json={"parameters": {"a": 1}, "changed_by": "ta-bot"})
        assert "ta09" in c.get("/api/v1/config/strategies").json().get("strategy_ids", [])


@row("TA-10")
def test_ta_bot_deletes_a_symbol_override_and_a_retry_is_200(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post("/api/v1/config/strategies/ta10", json={"parameters": {"a": 1}, "changed_by": "ta-bot"})
        c.post("/api/v1/config/strategies/ta10?symbol=BTCUSDT", json={"parameters": {"a": 2}, "changed_by": "ta-bot"})
        first, again = retried(c, "DELETE", "/api/v1/config/strategies/ta10?symbol=BTCUSDT")
        assert first.status_code == again.status_code == 200
        assert c.get("/api/v1/config/strategies/ta10/symbols").json()["symbols"] == []


@row("TA-11")
def test_ta_bot_reads_the_application_audit_trail(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post("/api/v1/config/application", json={**APP_CONFIG, "max_positions": 11, "changed_by": "ta-bot"})
        trail = c.get("/api/v1/config/audit/application?limit=100").json()
    assert isinstance(trail, list) and trail[0]["after"]["max_positions"] == 11 and trail[0]["service"] == TA_BOT


@row("TA-12")
def test_ta_bot_reads_a_strategy_audit_trail(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post("/api/v1/config/strategies/ta12", json={"parameters": {"a": 1}, "changed_by": "ta-bot"})
        c.post("/api/v1/config/strategies/ta12?symbol=BTCUSDT", json={"parameters": {"a": 3}, "changed_by": "ta-bot"})
        trail = c.get("/api/v1/config/audit/strategies/ta12?limit=100&symbol=BTCUSDT").json()
    assert [(r["symbol"], r["after"]) for r in trail] == [("BTCUSDT", {"a": 3})]


@row("TA-13")
def test_ta_bot_rolls_the_application_back(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post("/api/v1/config/application", json={**APP_CONFIG, "max_positions": 20, "changed_by": "ta-bot"})
        trail = c.get("/api/v1/config/audit/application").json()
        target = next(r["version"] for r in trail if r["after"]["max_positions"] == 10)
        resp = c.post(
            "/api/v1/config/rollback/application",
            json={"changed_by": "ta-bot", "target_version": target, "reason": "bad"},
        )
        assert resp.status_code == 200 and resp.json()["max_positions"] == 10 and resp.json()["rollback_to"] == target


@row("TA-14")
def test_ta_bot_rolls_a_strategy_back(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post("/api/v1/config/strategies/ta14", json={"parameters": {"a": 1}, "changed_by": "ta-bot"})
        c.post("/api/v1/config/strategies/ta14", json={"parameters": {"a": 2}, "changed_by": "ta-bot"})
        resp = c.post(
            "/api/v1/config/rollback/strategies/ta14",
            json={"changed_by": "ta-bot", "target_version": 1, "reason": None},
        )
    assert resp.status_code == 200 and resp.json()["parameters"] == {"a": 1} and resp.json()["version"] == 3


@row("TA-15")
def test_ta_bot_reads_the_current_lifecycle_state(env: Env) -> None:
    with env.service(TA_BOT) as c:
        assert c.get("/api/v1/strategies/ta15/lifecycle/state").json().get("state") is None
        c.post(
            "/api/v1/strategies/ta15/lifecycle/events",
            json={"from_state": None, "to_state": "shadow", "transitioned_by": "ta-bot"},
        )
        assert c.get("/api/v1/strategies/ta15/lifecycle/state").json().get("state") == "shadow"


@row("TA-16")
def test_ta_bot_creates_a_lifecycle_event_and_a_retry_answers_it(env: Env) -> None:
    payload = {
        "from_state": None,
        "to_state": "shadow",
        "transitioned_by": "lifecycle-manager",
        "reason": "promoted by backtest",
        "transitioned_at": "2026-03-01T10:00:00+00:00",
        "service": "ta-bot",
    }
    with env.service(TA_BOT) as c:
        first, again = retried(
            c, "POST", "/api/v1/strategies/ta16/lifecycle/events", params={"service": "ta-bot"}, json=payload
        )
    assert first.status_code == 201 and again.status_code == 200
    assert first.json().get("event_id") == again.json().get("event_id")


@row("TA-17")
def test_ta_bot_reads_lifecycle_history_oldest_first(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post(
            "/api/v1/strategies/ta17/lifecycle/events",
            json={"from_state": None, "to_state": "shadow", "transitioned_by": "m"},
        )
        c.post(
            "/api/v1/strategies/ta17/lifecycle/events",
            json={"from_state": "shadow", "to_state": "live", "transitioned_by": "m"},
        )
        events = (
            c.get(
                "/api/v1/strategies/ta17/lifecycle/events", params={"limit": 500, "order": "asc", "service": "ta-bot"}
            )
            .json()
            .get("events", [])
        )
    assert [e["to_state"] for e in events] == ["shadow", "live"]


# --- realtime strategies ------------------------------------------------------------------------


@row("RS-01")
def test_realtime_strategies_start_only_on_status_healthy(env: Env) -> None:
    with env.service(REALTIME) as c:
        assert c.get("/health/readiness").json().get("status") == "healthy"


def _rs_upsert(
    c: httpx.Client, collection: str, flt: dict[str, Any], params: dict[str, Any], version: int
) -> httpx.Response:
    now = dt.datetime.now(dt.UTC).isoformat()
    doc = {
        **flt,
        "parameters": params,
        "updated_at": now,
        "metadata": {"created_by": "rs", "reason": "tune"},
        "version": version,
        "created_at": now,
    }
    return c.put(f"/api/v1/mongodb/{collection}", json={"filter": flt, "data": doc, "upsert": True})


@row("RS-02")
def test_realtime_strategies_read_a_global_config(env: Env) -> None:
    with env.service(REALTIME) as c:
        _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs02"}, {"spread": 0.2}, 1)
        result = c.get(
            "/api/v1/mongodb/strategy_configs_global",
            params={"filter": json.dumps({"strategy_id": "rs02"}), "limit": 1, "offset": 0},
        ).json()
    assert result["data"][0]["parameters"] == {"spread": 0.2} and result["data"][0]["version"] == 1


@row("RS-03")
def test_realtime_strategies_read_a_symbol_config(env: Env) -> None:
    with env.service(REALTIME) as c:
        _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs03"}, {"spread": 0.2}, 1)
        _rs_upsert(c, "strategy_configs_symbol", {"strategy_id": "rs03", "symbol": "ETHUSDT"}, {"spread": 0.3}, 1)
        flt = json.dumps({"strategy_id": "rs03", "symbol": "ETHUSDT"})
        doc = c.get("/api/v1/mongodb/strategy_configs_symbol", params={"filter": flt, "limit": 1}).json()["data"][0]
    assert doc["symbol"] == "ETHUSDT" and doc["parameters"] == {"spread": 0.3}


@row("RS-04")
def test_realtime_strategies_upsert_a_global_config_as_a_new_audited_version(env: Env) -> None:
    with env.service(REALTIME) as c:
        created = _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs04"}, {"spread": 0.2}, 1).json()
        changed = _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs04"}, {"spread": 0.25}, 2).json()
        same = _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs04"}, {"spread": 0.25}, 3).json()
        trail = c.get("/api/v1/config/audit/strategies/rs04").json()
    for r in (created, changed, same):
        assert r.get("modified_count", 0) > 0 or r.get("upserted_count", 0) > 0
    assert [t["version"] for t in trail] == [2, 1] and trail[0]["service"] == REALTIME and trail[0]["reason"] == "tune"


@row("RS-05")
def test_realtime_strategies_upsert_a_symbol_config(env: Env) -> None:
    with env.service(REALTIME) as c:
        _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs05"}, {"spread": 0.2}, 1)
        out = _rs_upsert(
            c, "strategy_configs_symbol", {"strategy_id": "rs05", "symbol": "BTCUSDT"}, {"spread": 0.1}, 1
        ).json()
        view = c.get("/api/v1/config/strategies/rs05", params={"symbol": "BTCUSDT"}).json()
    assert out["upserted_count"] == 1 and view["parameters"] == {"spread": 0.1}


@row("RS-06")
def test_realtime_strategies_delete_configs(env: Env) -> None:
    with env.service(REALTIME) as c:
        _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs06"}, {"spread": 0.2}, 1)
        _rs_upsert(c, "strategy_configs_symbol", {"strategy_id": "rs06", "symbol": "BTCUSDT"}, {"spread": 0.1}, 1)
        sym = c.request(
            "DELETE",
            "/api/v1/mongodb/strategy_configs_symbol",
            json={"filter": {"strategy_id": "rs06", "symbol": "BTCUSDT"}},
        ).json()
        glob = c.request(
            "DELETE", "/api/v1/mongodb/strategy_configs_global", json={"filter": {"strategy_id": "rs06"}}
        ).json()
        actions = [t["action"] for t in c.get("/api/v1/config/audit/strategies/rs06").json()]
    assert sym["deleted_count"] > 0 and glob["deleted_count"] > 0 and actions.count("DELETE") == 2


@row("RS-07")
def test_realtime_strategies_add_an_audit_record(env: Env) -> None:
    record = {
        "strategy_id": "rs07",
        "symbol": "BTCUSDT",
        "action": "UPDATE",
        "old_parameters": {"spread": 0.2},
        "new_parameters": {"spread": 0.1},
        "changed_by": "rs",
        "reason": "tighter",
        "changed_at": "2026-03-01T10:00:00Z",
    }
    with env.service(REALTIME) as c:
        out = c.post("/api/v1/mongodb/strategy_config_audit", json={"data": record}).json()
    assert out.get("inserted_count", 0) > 0 and out.get("inserted_ids", [None])[0]


@row("RS-08")
def test_realtime_strategies_read_the_audit_trail_newest_first(env: Env) -> None:
    with env.service(REALTIME) as c:
        _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs08"}, {"spread": 0.2}, 1)
        note = {"strategy_id": "rs08", "action": "UPDATE", "changed_by": "rs", "changed_at": "2020-01-01T00:00:00Z"}
        c.post("/api/v1/mongodb/strategy_config_audit", json={"data": note})
        data = c.get(
            "/api/v1/mongodb/strategy_config_audit",
            params={
                "filter": json.dumps({"strategy_id": "rs08"}),
                "sort": json.dumps({"changed_at": -1}),
                "limit": 100,
            },
        ).json()["data"]
    assert [d["source"] for d in data] == ["server", "service"] and data[0]["new_parameters"] == {"spread": 0.2}


@row("RS-09")
def test_realtime_strategies_list_strategy_ids_and_symbol_overrides(env: Env) -> None:
    with env.service(REALTIME) as c:
        _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs09"}, {"spread": 0.2}, 1)
        _rs_upsert(c, "strategy_configs_symbol", {"strategy_id": "rs09", "symbol": "ETHUSDT"}, {"spread": 0.3}, 1)
        ids = [
            d["strategy_id"]
            for d in c.get("/api/v1/mongodb/strategy_configs_global", params={"fields": "strategy_id"}).json()["data"]
        ]
        syms = [
            d["symbol"]
            for d in c.get(
                "/api/v1/mongodb/strategy_configs_symbol",
                params={"filter": json.dumps({"strategy_id": "rs09"}), "fields": "symbol"},
            ).json()["data"]
        ]
    assert "rs09" in ids and syms == ["ETHUSDT"]


@row("RS-10")
def test_realtime_strategies_roll_a_strategy_back(env: Env) -> None:
    with env.service(REALTIME) as c:
        _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs10"}, {"spread": 0.2}, 1)
        _rs_upsert(c, "strategy_configs_global", {"strategy_id": "rs10"}, {"spread": 0.4}, 2)
        resp = c.post(
            "/api/v1/config/rollback/strategies/rs10",
            json={"changed_by": "rs", "target_version": 1, "reason": "revert"},
        )
    assert resp.status_code == 200 and resp.json() is not None and resp.json()["parameters"] == {"spread": 0.2}


# --- klines extractor -----------------------------------------------------------------------------


def _klines(n: int, start: int) -> list[dict[str, Any]]:
    from tests.test_platform_api import kline_record

    return [kline_record("ETHUSDT", start + i * M15, i=i) for i in range(n)]


@row("EX-01")
def test_extractor_without_headers_works_in_audit_mode_and_is_refused_in_enforce(env: Env) -> None:
    body = {"database": "mongodb", "collection": "klines_15m", "records": _klines(4, DAY0)}
    with env.anonymous(mode="enforce") as c:
        refused = c.post("/api/v1/data/insert", json=body)
    with env.anonymous(mode="audit") as c:
        first, again = retried(c, "POST", "/api/v1/data/insert", json=body)
    with env.anonymous(headers={"Authorization": f"Bearer {EXTRACTOR_TOKEN}"}) as c:
        with_token = c.post("/api/v1/data/insert", json={**body, "records": _klines(2, DAY0 + 4 * M15)})
    assert refused.status_code == 401 and "X-Petrosa-Service" in refused.json()["detail"][0]["msg"]
    assert first.json()["inserted_count"] == 4 and again.json()["duplicates"] == 4
    assert with_token.status_code == 200 and with_token.json()["inserted_count"] == 2
    with env.anonymous(mode="audit") as c:
        metrics = c.get("/metrics").text
    assert re.search(
        r'dm_api_auth_total\{decision="no_token",passed="true",route="/api/v1/data/insert",service="anonymous"\} [1-9]',
        metrics,
    )
    writes = recent_writes(env.meta, service="anonymous (unverified)")
    assert any(w.route == "/api/v1/data/insert" and w.status == 200 and w.auth_mode == "audit" for w in writes)


@row("EX-02")
def test_extractor_reads_the_latest_kline(env: Env) -> None:
    with env.anonymous(mode="audit") as c:
        c.post(
            "/api/v1/data/insert",
            json={"database": "mongodb", "collection": "klines_15m", "records": _klines(3, DAY0 + 20 * M15)},
        )
        params = {"filter": json.dumps({"symbol": "ETHUSDT"}), "sort": json.dumps({"close_time": -1}), "limit": 1}
        data = c.get("/api/v1/mongodb/klines_15m", params=params).json()["data"]
    assert data[0]["close_time"].endswith("Z") and data[0]["symbol"] == "ETHUSDT"


# --- gateway policy rows ----------------------------------------------------------------------------


@row("GP-01")
def test_characterization_artifacts_insert_and_read(env: Env) -> None:
    art = {"strategy_id": "s1", "strategy_revision_id": "srev_abc_def", "artifact_id": "art-1", "edge": {"sharpe": 1.2}}
    with env.service(TA_BOT) as c:
        first, again = retried(c, "POST", "/api/v1/mongodb/characterization_artifacts", json={"data": art})
        data = c.get(
            "/api/v1/mongodb/characterization_artifacts", params={"filter": json.dumps({"strategy_id": "s1"})}
        ).json()["data"]
    assert first.json()["inserted_count"] == 1 and again.json()["inserted_count"] == 1 and len(data) == 1


@row("GP-02")
def test_config_rate_limits_insert_and_read(env: Env) -> None:
    rec = {"key": "ta-bot:rsi", "service": "ta-bot", "timestamp": "2026-03-01T00:00:00Z"}
    with env.service(TA_BOT) as c:
        assert c.post("/api/v1/mongodb/config_rate_limits", json={"data": rec}).json()["inserted_count"] == 1
        assert c.get("/api/v1/mongodb/config_rate_limits", params={"filter": json.dumps({"key": "ta-bot:rsi"})}).json()[
            "data"
        ]


@row("GP-03")
def test_lifecycle_events_as_a_collection_are_transitions(env: Env) -> None:
    event = {"strategy_id": "gp03", "from_state": None, "to_state": "shadow", "transitioned_by": "rs"}
    with env.service(REALTIME) as c:
        first, again = retried(c, "POST", "/api/v1/mongodb/strategy_lifecycle_events", json={"data": event})
        wrong = c.post("/api/v1/mongodb/strategy_lifecycle_events", json={"data": {**event, "to_state": "live"}}).json()
        data = c.get(
            "/api/v1/mongodb/strategy_lifecycle_events", params={"filter": json.dumps({"strategy_id": "gp03"})}
        ).json()["data"]
    assert first.json()["inserted_count"] == 1 and again.json()["duplicates"] == 1
    assert wrong["failed"] == 1 and "'shadow'" in wrong["errors"][0]["reason"]
    assert [d["to_state"] for d in data] == ["shadow"]


@row("GP-04")
def test_heartbeat_state_takes_upserts_only(env: Env) -> None:
    with env.service(REALTIME) as c:
        body = {
            "filter": {"service": "realtime-strategies"},
            "data": {"status": "healthy", "updated_at": "2026-03-01T00:00:00Z"},
            "upsert": True,
        }
        first, again = retried(c, "PUT", "/api/v1/mongodb/heartbeat_state", json=body)
        plain = c.put("/api/v1/mongodb/heartbeat_state", json={**body, "upsert": False})
        insert = c.post("/api/v1/mongodb/heartbeat_state", json={"data": {"service": "x"}})
        data = c.get(
            "/api/v1/mongodb/heartbeat_state", params={"filter": json.dumps({"service": "realtime-strategies"})}
        ).json()["data"]
    assert first.json()["upserted_count"] == 1 and again.json()["modified_count"] == 1 and len(data) == 1
    assert plain.status_code == 405 and insert.status_code == 405


@row("GP-05")
def test_a_decision_is_reconstructed_from_its_events_and_signals(env: Env) -> None:
    with env.service(TA_BOT) as c:
        c.post(
            "/api/v1/mongodb/signals",
            json={"data": {"symbol": "ETHUSDT", "strategy_id": "gp05", "signal": "SELL", "decision_id": "dec-gp05"}},
        )
        c.post(
            "/api/v1/strategies/gp05/lifecycle/events",
            json={
                "from_state": None,
                "to_state": "live",
                "transitioned_by": "m",
                "metadata": {"decision_id": "dec-gp05"},
            },
        )
        out = c.get("/api/v1/lifecycle/reconstruct", params={"decision_id": "dec-gp05"}).json()
        same = c.get("/api/v1/lifecycle/dec-gp05").json()
        missing = c.get("/api/v1/lifecycle/reconstruct", params={"decision_id": "dec-none"})
    assert [e["to_state"] for e in out["events"]] == ["live"] and out["signals"][0]["strategy_id"] == "gp05"
    assert same == out and missing.status_code == 404


def test_every_row_of_the_contract_document_has_its_replay() -> None:
    documented = set(re.findall(r"^\| ((?:TE|TA|RS|EX|GP)-\d\d) \|", CONTRACT.read_text(), flags=re.MULTILINE))
    assert documented and documented == set(ROWS), (sorted(documented - set(ROWS)), sorted(set(ROWS) - documented))


def test_every_service_write_names_its_service_on_the_audit_trail(env: Env) -> None:
    with env.service(ENGINE) as c:
        c.put("/api/v1/trading/daily-pnl/2026-02-09", json={"daily_pnl": 1}).raise_for_status()
    with env.service(TA_BOT) as c:
        c.post("/api/v1/config/strategies/trail", json={"parameters": {"a": 1}, "changed_by": "x"}).raise_for_status()
    engine = recent_writes(env.meta, service=ENGINE)
    assert any(
        w.route == "/api/v1/trading/daily-pnl/{date_value}" and w.target == "2026-02-09" and w.verified for w in engine
    )
    assert any(
        w.route == "/api/v1/config/strategies/{strategy_id}" and w.status == 200
        for w in recent_writes(env.meta, service=TA_BOT)
    )
