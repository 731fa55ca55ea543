"""1,000 position writes through dm_client across a proxy that loses 10 % of answers and resets 5 % of connections.

Every write is one the trade engine makes: inserts of positions without ``position_id`` (the
server derives it), upserts that open a position, upserts that close it with its PnL. The
proxy (tests/chaos_proxy.py) lets the server commit and then drops the answer, or resets the
connection before the server sees the request; dm_client retries each write with its one
``Idempotency-Key``. The store must end with exactly the intended rows: none doubled, none
lost, every closed position's PnL counted once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from api.app import create_app
from api.deps import ApiSettings
from api.testing import serve
from dm_client import DMClient
from dm_resources.embedded import free_port
from dm_resources.metadata.idempotency import count_keys
from dm_resources.metadata.platform import POSITIONS
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings
from tests.chaos_proxy import ChaosProxy

TOKEN = "engine-token-0123456789"
INSERTS = 600  # closed positions inserted without position_id
SLOTS = 200  # positions opened by an upsert, then closed by another: 400 writes
WORKERS = 8


@pytest.fixture
def api_url(mongo_store: MongoStore, metadata_url: str) -> Iterator[tuple[str, MetadataStore]]:
    meta = MetadataStore(metadata_url)
    meta.migrate()
    settings = load_settings(
        mongo_url=mongo_store.url,
        mongo_db=mongo_store.db_name,
        metadata_url=metadata_url,
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
    )
    tokens = SecretStr(json.dumps({TOKEN: ["positions:write", "read"]}))
    app = create_app(settings, mongo=mongo_store, meta=meta, api_settings=ApiSettings(tokens=tokens))
    with serve(app) as url:
        yield url, meta
    meta.close()


def pnl(i: int) -> Decimal:
    return Decimal(i) / 4 - 50


def test_1000_writes_through_a_lossy_proxy_end_with_exactly_the_intended_rows(
    api_url: tuple[str, MetadataStore],
) -> None:
    url, meta = api_url
    answers: list[bool] = []

    def worker(w: int) -> None:
        with DMClient(proxy.url, token=TOKEN, timeout=30, retries=10, backoff=0.005, max_backoff=0.05) as c:
            for i in range(w, INSERTS, WORKERS):
                record = {
                    "symbol": "BTCUSDT",
                    "position_side": "LONG",
                    "status": "closed",
                    "strategy_id": f"ins-{i}",
                    "pnl": str(pnl(i)),
                }
                out = c.insert("mysql", "positions", [record])
                # The first answer, even when it was lost and this is a retry's (a replay): a retry
                # without its key would read "duplicates: 1" here, and "matched 0" on the close below.
                answers.append((out.inserted_count, out.duplicates, out.failed) == (1, 0, 0))
            for s in range(w, SLOTS, WORKERS):
                slot = {"symbol": f"C{s:03d}USDT", "position_side": "SHORT", "status": "open"}
                opened = c.upsert_position(slot, {"strategy_id": f"slot-{s}", "quantity": "1"})
                closed = c.upsert_position(slot, {"status": "closed", "pnl": str(pnl(s)), "close_reason": "tp"})
                answers.append(opened.upserted_count == 1 and closed.modified_count == 1)

    with ChaosProxy(url, drop_rate=0.10, reset_rate=0.05, seed=20) as proxy:
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(worker, range(WORKERS)))
        stats = dict(proxy.stats)

    with meta._read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(POSITIONS))]
        total = conn.execute(select(func.sum(POSITIONS.c.pnl))).scalar()
    inserted = [r for r in rows if str(r["strategy_id"]).startswith("ins-")]
    slots = [r for r in rows if str(r["strategy_id"]).startswith("slot-")]
    summary = {**stats, "rows": len(rows), "keys": count_keys(meta), "wrong_answers": answers.count(False)}
    print(f"chaos: {summary}")  # the figures for the README (pytest -s)
    assert stats["drop"] >= 50 and stats["reset"] >= 25, summary  # the proxy did its part
    assert len(answers) == INSERTS + SLOTS and all(answers), summary
    assert sorted(r["strategy_id"] for r in inserted) == sorted(f"ins-{i}" for i in range(INSERTS)), summary
    assert sorted(r["strategy_id"] for r in slots) == sorted(f"slot-{s}" for s in range(SLOTS)), summary
    assert all(r["status"] == "closed" for r in rows) and len(rows) == INSERTS + SLOTS, summary
    expected = sum((pnl(i) for i in range(INSERTS)), Decimal(0)) + sum((pnl(s) for s in range(SLOTS)), Decimal(0))
    assert Decimal(str(total)) == expected, summary  # every PnL counted exactly once
