"""Large kline inserts run in a worker process (api/offload.py) with the in-process answer; the lifespan's tuning.

Batch semantics are the contract's: a bad record is listed in ``errors`` while the good ones
are stored; a record already stored (also one repeated later in the same batch, in another
chunk) is a duplicate, not an error.
"""

from __future__ import annotations

import gc
import sys
import time
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.contract.datasets import resolve
from api.contract.service import STORE_CHUNK, _insert_klines
from api.deps import ApiSettings
from api.errors import ApiError
from api.offload import OFFLOAD_MIN_RECORDS, InsertProcesses
from dm_resources.heap import frozen_stages
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings
from tests.extractor_klines import extractor_kline

TOKEN = "offload-token-0123456789"


def kline(i: int) -> dict[str, Any]:
    return extractor_kline(i)


def batch(n: int, *, bad: int, repeat: tuple[int, int]) -> list[dict[str, Any]]:
    """``n`` klines; record ``bad`` has a high below its low; record ``repeat[1]`` repeats record ``repeat[0]``."""
    records = [kline(i) for i in range(n)]
    records[bad]["high_price"] = "1"
    records[repeat[1]] = dict(records[repeat[0]])
    return records


@pytest.fixture
def app_parts(mongo_store: MongoStore, sqlite_metadata_url: str) -> Any:
    meta = MetadataStore(sqlite_metadata_url)
    meta.migrate()
    settings = load_settings(
        mongo_url=mongo_store.url, mongo_db=mongo_store.db_name, metadata_url=sqlite_metadata_url, api_token=TOKEN
    )
    yield settings, meta
    meta.close()


def test_a_large_batch_is_checked_and_stored_in_a_worker_process(mongo_store: MongoStore, app_parts: Any) -> None:
    settings, meta = app_parts
    n = OFFLOAD_MIN_RECORDS + STORE_CHUNK  # more than one chunk, and enough to leave the process
    bad, repeat = 3, (50, n - 10)  # the repeat lies in a later chunk than its original
    records = batch(n, bad=bad, repeat=repeat)
    app = create_app(settings, mongo=mongo_store, meta=meta, api_settings=ApiSettings(pattern_warmup=False))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"database": "mongodb", "collection": "klines_1m", "records": records}
    with TestClient(app) as client:
        first = client.post("/api/v1/data/insert", json=body, headers={**auth, "Idempotency-Key": str(uuid.uuid4())})
        assert first.status_code == 200, first.text
        assert app.state.dm.inserts._pool is not None  # it went to the worker process
        answer = first.json()
        assert (answer["inserted_count"], answer["duplicates"], answer["failed"]) == (n - 2, 1, 1)
        assert [e["index"] for e in answer["errors"]] == [bad]
        assert "high" in answer["errors"][0]["reason"]

        again = client.post("/api/v1/data/insert", json=body, headers={**auth, "Idempotency-Key": str(uuid.uuid4())})
        assert (again.json()["inserted_count"], again.json()["duplicates"], again.json()["failed"]) == (0, n - 1, 1)
    assert mongo_store.collection("klines").count_documents({"symbol": "BTCUSDT"}) == n - 2

    # In process (DM_API_INSERT_PROCESSES=0, or a small batch): the same answer for the same records.
    other = MongoStore(mongo_store.url, f"{mongo_store.db_name}_b", retry_attempts=2)
    try:
        other.ensure_indexes()
        in_process = _insert_klines(other, resolve("klines_1m"), batch(n, bad=bad, repeat=repeat))
        assert in_process == answer
    finally:
        other.client.drop_database(other.db_name)
        other.close()


def test_a_worker_that_dies_is_a_503_and_the_next_request_gets_a_new_one(mongo_store: MongoStore) -> None:
    ds = resolve("klines_1m")
    records = [kline(i) for i in range(OFFLOAD_MIN_RECORDS)]
    pool = InsertProcesses(1)
    try:
        assert pool.insert_klines(mongo_store, ds, records)["inserted_count"] == OFFLOAD_MIN_RECORDS
        executor = pool._pool
        assert executor is not None
        for proc in list(executor._processes.values()):  # an out-of-memory kill, say
            proc.kill()
            proc.join(10)
        deadline = time.monotonic() + 10
        while not executor._broken and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(ApiError) as refused:
            pool.insert_klines(mongo_store, ds, records)
        assert refused.value.status == 503
        assert pool.insert_klines(mongo_store, ds, records)["duplicates"] == OFFLOAD_MIN_RECORDS
    finally:
        pool.close()


def test_the_lifespan_sets_the_switch_interval_and_freezes_the_startup_heap(app_parts: Any) -> None:
    settings, meta = app_parts
    before = sys.getswitchinterval()
    app = create_app(settings, meta=meta, api_settings=ApiSettings(pattern_warmup=False, switch_interval_ms=2.0))
    try:
        with TestClient(app) as client:
            assert client.get("/health/liveness").status_code == 200
            assert sys.getswitchinterval() == pytest.approx(0.002)
            assert "lifespan" in frozen_stages()
            assert gc.get_freeze_count() > 0
    finally:
        sys.setswitchinterval(before)
        gc.unfreeze()
