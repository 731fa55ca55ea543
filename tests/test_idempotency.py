"""Exactly-once writes: Idempotency-Key claims, replays and refusals; server receipts; a lost COMMIT.

Against the real metadata databases (SQLite, and MariaDB when CI provides it) and, for the
HTTP behaviour, the real API on loopback. A lost COMMIT is produced where it happens: the
database commits, then the client side of the connection reports the error the driver raises
when the connection drops during COMMIT, and the store retries the transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, ClassVar

import httpx
import pymysql
import pytest
from pydantic import SecretStr
from sqlalchemy import Connection, func, select, text

from api.app import create_app
from api.deps import ApiSettings
from api.testing import serve
from dm_resources.embedded import free_port
from dm_resources.metadata.idempotency import (
    KEYS,
    RECEIPT_CALLER,
    KeyedRequest,
    KeyInFlight,
    KeyReused,
    Replay,
    WriteOnce,
    count_keys,
    prune,
)
from dm_resources.metadata.platform import POSITIONS, Cond, PlatformTables
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings

ENGINE = "engine-token-0123456789"
OTHER = "other-engine-token-0123456789"
TOKENS = {ENGINE: ["positions:write", "pnl:write", "read"], OTHER: ["positions:write", "read"]}


@pytest.fixture
def meta(metadata_url: str) -> Iterator[MetadataStore]:  # type: ignore[override]  # both backends here
    store = MetadataStore(metadata_url)
    store.migrate()
    yield store
    store.close()


def req(key: str = "k-1", fp: str = "f" * 64, caller: str = "c" * 64) -> KeyedRequest:
    return KeyedRequest(caller=caller, key=key, fingerprint=fp, request="PUT /api/v1/mysql/positions")


def positions(meta: MetadataStore, **where: Any) -> list[dict[str, Any]]:
    stmt = select(POSITIONS)
    for name, value in where.items():
        stmt = stmt.where(POSITIONS.c[name] == value)
    with meta._read() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]


def open_position(symbol: str = "BTCUSDT", **extra: Any) -> dict[str, Any]:
    return {"symbol": symbol, "position_side": "LONG", "status": "open", "quantity": Decimal("1"), **extra}


# --- the store-level mechanism --------------------------------------------------------------------------------


def test_a_repeat_answers_the_stored_result_and_writes_nothing(meta: MetadataStore) -> None:
    calls: list[int] = []

    def work(conn: Connection) -> dict[str, Any]:
        calls.append(1)
        out = PlatformTables(meta).insert("positions", [open_position()], conn=conn, id_seed="s")
        return {"inserted": out.inserted}

    assert WriteOnce(meta, req()).write(work) == {"inserted": 1}
    with pytest.raises(Replay) as replay:
        WriteOnce(meta, req()).write(work)
    assert json.loads(replay.value.body) == {"inserted": 1} and replay.value.status == 200
    assert len(calls) == 1 and len(positions(meta)) == 1


def test_a_key_reused_with_another_payload_is_refused(meta: MetadataStore) -> None:
    WriteOnce(meta, req(fp="a" * 64)).write(lambda conn: {"n": 1})
    with pytest.raises(KeyReused, match="k-1"):
        WriteOnce(meta, req(fp="b" * 64)).write(lambda conn: {"n": 2})
    # Keys belong to their caller: another caller's k-1 is its own.
    assert WriteOnce(meta, req(fp="b" * 64, caller="d" * 64)).write(lambda conn: {"n": 3}) == {"n": 3}


def test_a_repeat_while_the_first_runs_is_409_until_its_lease_ends(meta: MetadataStore) -> None:
    now = dt.datetime.now(dt.UTC)
    first = WriteOnce(meta, req(), lease_s=30, clock=lambda: now)
    first._claim(meta)  # the first request holds the key: its write has not committed yet
    with pytest.raises(KeyInFlight) as busy:
        WriteOnce(meta, req(), lease_s=30, clock=lambda: now + dt.timedelta(seconds=10)).write(lambda c: {"n": 2})
    assert 1 <= busy.value.retry_after_s <= 20
    # The first request died: after its lease a repeat takes the key over and writes.
    later = WriteOnce(meta, req(), lease_s=30, clock=lambda: now + dt.timedelta(seconds=31))
    assert later.write(lambda c: {"n": 2}) == {"n": 2}
    # The late original writes nothing: it answers what the request that took its key over stored.
    ran: list[int] = []
    late = meta._write(lambda conn: first._finish(conn, lambda c: ran.append(1) or {"n": 1}, 200))
    assert late == {"n": 2} and ran == []


def test_concurrent_repeats_run_the_write_once(meta: MetadataStore) -> None:
    n = 6
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        def work(conn: Connection) -> dict[str, Any]:
            PlatformTables(meta).insert("positions", [open_position("ETHUSDT")], conn=conn, id_seed="race")
            return {"ok": True}

        barrier.wait()
        try:
            WriteOnce(meta, req("race")).write(work)
            result = "wrote"
        except KeyInFlight:
            result = "409"
        except Replay:
            result = "replay"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcomes.count("wrote") == 1 and len(outcomes) == n, outcomes
    assert len(positions(meta, symbol="ETHUSDT")) == 1


def test_a_failed_write_releases_its_key(meta: MetadataStore) -> None:
    def failing(conn: Connection) -> dict[str, Any]:
        PlatformTables(meta).insert("positions", [open_position("SOLUSDT")], conn=conn, id_seed="x")
        raise ValueError("refused after writing")

    with pytest.raises(ValueError, match="refused"):
        WriteOnce(meta, req("fix-me")).write(failing)
    assert positions(meta, symbol="SOLUSDT") == []  # rolled back with the claim's answer
    assert count_keys(meta, "c" * 64) == 0  # released: the corrected request may reuse the key
    assert WriteOnce(meta, req("fix-me")).write(lambda c: {"n": 1}) == {"n": 1}


def test_keys_expire_after_at_least_a_day_and_are_pruned(meta: MetadataStore) -> None:
    with pytest.raises(ValueError, match="24 h"):
        WriteOnce(meta, req(), ttl_s=3600)
    t0 = dt.datetime.now(dt.UTC)
    WriteOnce(meta, req("old"), clock=lambda: t0).write(lambda c: {"n": 1})
    WriteOnce(meta, req("new"), clock=lambda: t0 + dt.timedelta(hours=20)).write(lambda c: {"n": 2})
    WriteOnce(meta, clock=lambda: t0).write(lambda c: {"n": 3})  # a receipt: kept an hour
    # Within 24 h the key still replays; after, it is forgotten and a new request may use it.
    with pytest.raises(Replay):
        WriteOnce(meta, req("old"), clock=lambda: t0 + dt.timedelta(hours=23)).write(lambda c: {"n": 9})
    assert prune(meta, now=t0 + dt.timedelta(hours=2)) == 1  # the receipt only
    assert prune(meta, now=t0 + dt.timedelta(hours=25), batch=1) == 1  # "old", in batches of 1
    assert count_keys(meta) == 1
    later = WriteOnce(meta, req("old", fp="e" * 64), clock=lambda: t0 + dt.timedelta(hours=25))
    assert later.write(lambda c: {"n": 4}) == {"n": 4}


# --- a lost COMMIT --------------------------------------------------------------------------------------------


def lose_commits(meta: MetadataStore, pattern: tuple[bool, ...] = (True,)) -> list[bool]:
    """The next COMMITs reach the database and succeed; where ``pattern`` says True, the client then sees the
    connection drop (the driver's error for it), and the store retries the transaction."""
    dialect = meta.engine.dialect
    real = dialect.do_commit
    seen: list[bool] = []

    def commit_then_drop(dbapi_connection: Any) -> None:
        real(dbapi_connection)
        lose = pattern[len(seen)] if len(seen) < len(pattern) else False
        seen.append(lose)
        if lose:
            if meta.backend == "sqlite":
                raise sqlite3.OperationalError("database is locked")  # what SQLite reports as transient
            raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")

    dialect.do_commit = commit_then_drop  # type: ignore[method-assign]  # fault injection on this engine only
    return seen


def test_a_lost_commit_then_a_retry_cannot_duplicate_a_write(meta: MetadataStore) -> None:
    tables = PlatformTables(meta)
    tables.insert("positions", [open_position("BNBUSDT", position_id="p-bnb")])
    open_filter = [Cond("symbol", "eq", "BNBUSDT"), Cond("position_side", "eq", "LONG"), Cond("status", "eq", "open")]
    close = {"status": "closed", "final_realized_pnl": Decimal("12.5")}
    lost = lose_commits(meta)

    # An upsert that closes the position: committed, then the connection dropped; the store retried.
    answer = WriteOnce(meta).write(
        lambda conn: vars(tables.update("positions", open_filter, close, upsert=True, conn=conn))
    )
    assert lost[:2] == [True, False]
    assert answer["modified"] == 1  # the first attempt's answer, not the retry's "nothing matched"
    rows = positions(meta, symbol="BNBUSDT")
    assert len(rows) == 1 and rows[0]["status"] == "closed"

    # An insert of a position without position_id, same story.
    lost = lose_commits(meta)
    answer = WriteOnce(meta).write(lambda conn: vars(tables.insert("positions", [open_position("ADAUSDT")], conn=conn)))
    assert lost[:2] == [True, False]
    assert answer["inserted"] == 1 and answer["duplicates"] == 0
    assert len(positions(meta, symbol="ADAUSDT")) == 1


def test_without_a_receipt_the_natural_keys_still_hold(meta: MetadataStore) -> None:
    """Direct store calls (no WriteOnce) retried after a lost COMMIT: no second row, whatever the answer says."""
    tables = PlatformTables(meta)
    tables.insert("positions", [open_position("DOTUSDT", position_id="p-dot")])
    open_filter = [Cond("symbol", "eq", "DOTUSDT"), Cond("position_side", "eq", "LONG"), Cond("status", "eq", "open")]
    lose_commits(meta)
    tables.update("positions", open_filter, {"status": "closed"}, upsert=True)
    lose_commits(meta)
    tables.insert("positions", [open_position("LTCUSDT")])
    assert len(positions(meta, symbol="DOTUSDT")) == 1 and len(positions(meta, symbol="LTCUSDT")) == 1


# --- over HTTP ------------------------------------------------------------------------------------------------


@pytest.fixture
def api(mongo_store: MongoStore, meta: MetadataStore) -> Iterator[tuple[httpx.Client, MetadataStore]]:
    settings = load_settings(
        mongo_url=mongo_store.url,
        mongo_db=mongo_store.db_name,
        metadata_url=meta.url.render_as_string(hide_password=False),
        symbols=["BTCUSDT"],
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
    )
    app = create_app(
        settings, mongo=mongo_store, meta=meta, api_settings=ApiSettings(tokens=SecretStr(json.dumps(TOKENS)))
    )
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, meta


def auth(token: str, key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def insert_body(*records: dict[str, Any]) -> dict[str, Any]:
    return {"database": "mysql", "collection": "positions", "records": list(records)}


def test_a_retried_insert_with_its_key_is_one_row_and_the_same_answer(
    api: tuple[httpx.Client, MetadataStore],
) -> None:
    http, meta = api
    key = str(uuid.uuid4())
    record = {"symbol": "BTCUSDT", "position_side": "SHORT", "status": "closed", "pnl": "3.5"}
    first = http.post("/api/v1/data/insert", json=insert_body(record, record), headers=auth(ENGINE, key))
    assert first.json()["inserted_count"] == 2, first.text  # two records, two positions: the key seeds their ids
    again = http.post("/api/v1/data/insert", json=insert_body(record, record), headers=auth(ENGINE, key))
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert len(positions(meta, symbol="BTCUSDT")) == 2
    # The same key with another body, or malformed: refused, naming the header.
    other = http.post("/api/v1/data/insert", json=insert_body(record), headers=auth(ENGINE, key))
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert "another request" in other.json()["detail"][0]["msg"]
    for bad in (b"", "é".encode("latin-1") * 3, b"x" * 256, b"tab\there"):
        headers: dict[str, Any] = {**auth(ENGINE), "Idempotency-Key": bad}
        resp = http.post("/api/v1/data/insert", json=insert_body(record), headers=headers)
        assert resp.status_code in (400, 422) and "Idempotency-Key" in json.dumps(resp.json()), (bad, resp.text)
    # A quoted Structured Field string is the same key; another caller's key is its own.
    quoted = http.post("/api/v1/data/insert", json=insert_body(record, record), headers=auth(ENGINE, f'"{key}"'))
    assert quoted.headers.get("Idempotent-Replayed") == "true"
    mine = http.post("/api/v1/data/insert", json=insert_body(record, record), headers=auth(OTHER, key))
    assert mine.json()["inserted_count"] == 2 and "Idempotent-Replayed" not in mine.headers
    assert len(positions(meta, symbol="BTCUSDT")) == 4


def test_a_repeat_while_the_first_is_in_flight_is_409(api: tuple[httpx.Client, MetadataStore]) -> None:
    from api.idempotency import caller_of, fingerprint

    http, meta = api
    body = {"filter": {"date": "2026-03-01"}, "data": {"daily_pnl": "5"}, "upsert": True}
    raw = json.dumps(body).encode()

    class FakeRequest:  # what caller_of reads
        headers: ClassVar[dict[str, str]] = {"authorization": f"Bearer {ENGINE}"}

    request = KeyedRequest(
        caller_of(FakeRequest()),  # type: ignore[arg-type]  # duck-typed request headers
        "busy-1",
        fingerprint("PUT", "/api/v1/mysql/daily_pnl", "", raw),
    )
    WriteOnce(meta, request)._claim(meta)  # another worker holds the key
    resp = http.put(
        "/api/v1/mysql/daily_pnl", content=raw, headers={**auth(ENGINE, "busy-1"), "content-type": "application/json"}
    )
    assert resp.status_code == 409 and int(resp.headers["Retry-After"]) >= 1, resp.text
    assert resp.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    with meta._read() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM daily_pnl")).scalar() == 0


def test_replaying_a_close_without_a_key_does_not_insert_a_second_closed_row(
    api: tuple[httpx.Client, MetadataStore],
) -> None:
    """The replayed upsert found no open position and inserted a closed one: the PnL was counted twice."""
    http, meta = api
    opened = {"position_id": "pos-x", "symbol": "XRPUSDT", "position_side": "LONG", "status": "open"}
    http.post("/api/v1/data/insert", json=insert_body(opened), headers=auth(ENGINE)).raise_for_status()
    close = {
        "filter": {"symbol": "XRPUSDT", "position_side": "LONG", "status": "open"},
        "data": {"status": "closed", "final_realized_pnl": "12.5"},
        "upsert": True,
    }
    first = http.put("/api/v1/mysql/positions", json=close, headers=auth(ENGINE)).json()
    replayed = http.put("/api/v1/mysql/positions", json=close, headers=auth(ENGINE)).json()
    assert first["modified_count"] == 1
    assert {k: replayed[k] for k in ("matched_count", "modified_count", "upserted_count", "upserted_id")} == {
        "matched_count": 0,
        "modified_count": 0,
        "upserted_count": 0,
        "upserted_id": None,
    }
    rows = positions(meta, symbol="XRPUSDT")
    assert len(rows) == 1 and rows[0]["status"] == "closed"
    with meta._read() as conn:
        total = conn.execute(select(func.sum(POSITIONS.c.final_realized_pnl))).scalar()
    assert Decimal(str(total)) == Decimal("12.5")


def test_an_insert_without_position_id_sent_twice_is_one_row(api: tuple[httpx.Client, MetadataStore]) -> None:
    """Each attempt drew a fresh UUID: a client's retry stored the position again."""
    http, meta = api
    record = {"symbol": "TRXUSDT", "position_side": "SHORT", "status": "closed", "entry_time": "2026-03-01T10:00:00Z"}
    outs = [http.post("/api/v1/data/insert", json=insert_body(record), headers=auth(ENGINE)).json() for _ in range(3)]
    assert [o["inserted_count"] for o in outs] == [1, 0, 0] and [o["duplicates"] for o in outs] == [0, 1, 1]
    assert len(positions(meta, symbol="TRXUSDT")) == 1


def test_a_lost_commit_behind_the_api_answers_the_first_result(api: tuple[httpx.Client, MetadataStore]) -> None:
    http, meta = api
    opened = {"position_id": "pos-l", "symbol": "LINKUSDT", "position_side": "SHORT", "status": "open"}
    http.post("/api/v1/data/insert", json=insert_body(opened), headers=auth(ENGINE)).raise_for_status()
    # Lost: the key's claim, then the write (each committed before the connection dropped).
    lost = lose_commits(meta, (True, False, True))
    close = {
        "filter": {"symbol": "LINKUSDT", "position_side": "SHORT", "status": "open"},
        "data": {"status": "closed", "pnl": "-1.25"},
        "upsert": True,
    }
    resp = http.put("/api/v1/mysql/positions", json=close, headers=auth(ENGINE, "close-link"))
    assert lost[:4] == [True, False, True, False] and resp.json()["modified_count"] == 1, resp.text
    assert [r["status"] for r in positions(meta, symbol="LINKUSDT")] == ["closed"]
    with meta._read() as conn:
        row = conn.execute(select(KEYS).where(KEYS.c.key == "close-link")).first()
        receipts = conn.execute(select(func.count()).where(KEYS.c.caller == RECEIPT_CALLER)).scalar()
    assert row is not None and row.state == "done" and json.loads(row.body)["modified_count"] == 1
    assert receipts == 1  # the insert before it, sent without a key
