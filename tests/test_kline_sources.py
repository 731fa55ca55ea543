"""Klines from extractors: closed ones only, and the exchange's own kline wins over an extractor's.

Through the real parts: the API (dm_client over loopback HTTP) for the extractor, the ingest
service (a subprocess on a real nats-server) for the websocket kline, SecantusDB underneath.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from api.app import create_app
from api.contract.datasets import resolve
from api.contract.filters import ValueProblem
from api.contract.klines import to_document
from api.deps import ApiSettings
from api.testing import serve
from dm_client import DMClient
from dm_resources.embedded import free_port
from dm_resources.intervals import MINUTE_MS
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings
from ingest_service.writer import write_klines
from tests import test_ingest_service as ingest_tests
from tests.test_ingest_service import Ingest

ingest = ingest_tests.ingest  # the ingest tests' fixture: names, a subprocess, a database of its own
EXTRACTOR = "extractor-token-0123456789"
MINUTE = 1_767_225_600_000  # 2026-01-01T00:00:00Z: long closed


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def extractor_kline(open_ms: int, price: str = "86000.5") -> dict[str, Any]:
    return {
        "symbol": "BTCUSDT",
        "interval": "1m",
        "open_time": iso(open_ms),
        "close_time": iso(open_ms + MINUTE_MS - 1),
        "open_price": price,
        "high_price": price,
        "low_price": price,
        "close_price": price,
        "volume": "1",
        "quote_asset_volume": price,
        "taker_buy_base_asset_volume": "0.5",
        "taker_buy_quote_asset_volume": "43000.25",
        "number_of_trades": 3,
        "source": "binance_futures_rest",
        "extractor_version": "2.3.1",
        "extracted_at": "2026-01-01T00:05:00Z",
    }


def ws_kline(open_ms: int, close: str, closed: bool = True) -> bytes:
    return orjson.dumps(
        {
            "stream": "btcusdt@kline_1m",
            "data": {
                "e": "kline",
                "E": open_ms + MINUTE_MS + 50,
                "s": "BTCUSDT",
                "k": {
                    "t": open_ms,
                    "T": open_ms + MINUTE_MS - 1,
                    "s": "BTCUSDT",
                    "i": "1m",
                    "f": 100,
                    "L": 200,
                    "o": "87000.10",
                    "c": close,
                    "h": "87020.30",
                    "l": "86990.40",
                    "v": "12.345",
                    "n": 101,
                    "x": closed,
                    "q": "1074000.123456",
                    "V": "6.100",
                    "Q": "530000.5",
                    "B": "0",
                },
            },
        }
    )


def test_decimals_are_packed_bit_for_bit_as_bson_packs_them() -> None:
    from decimal import Decimal

    from bson.decimal128 import Decimal128

    from api.contract.klines import to_decimal128

    for text in ("27000.5", "-0.00000001", "0", "-0", "1E+5", "1.50", "0.000", "-1.5E-300", "1E+6000", "9" * 34):
        assert to_decimal128(Decimal(text)).bid == Decimal128(Decimal(text)).bid, text
    big = Decimal("123456789012345678901234567890.1234")
    assert to_decimal128(big).to_decimal() == big


def test_only_closed_klines_are_accepted() -> None:
    ds = resolve("klines_1m")
    now = MINUTE + 10 * MINUTE_MS + 30_000  # half a minute into the 11th minute
    assert to_document(ds, extractor_kline(MINUTE + 9 * MINUTE_MS), now=now)["source"] == "extractor"
    for open_ms in (MINUTE + 10 * MINUTE_MS, MINUTE + 600 * MINUTE_MS):  # still open; hours in the future
        with pytest.raises(ValueProblem, match="has not closed"):
            to_document(ds, extractor_kline(open_ms), now=now)
    hourly = resolve("klines_1h")
    record = {**extractor_kline(MINUTE), "interval": "1h", "close_time": iso(MINUTE + 3_600_000 - 1)}
    with pytest.raises(ValueProblem, match=r"closes at 2026-01-01T00:59:59\.999Z"):
        to_document(hourly, record, now=MINUTE + 30 * MINUTE_MS)


def test_a_still_open_kline_fails_its_record_over_http(mongo_store: MongoStore, sqlite_metadata_url: str) -> None:
    with api_for(mongo_store, sqlite_metadata_url) as url, DMClient(url, token=EXTRACTOR) as client:
        current = (int(dt.datetime.now(dt.UTC).timestamp() * 1000) // MINUTE_MS) * MINUTE_MS
        out = client.insert_klines("1m", [extractor_kline(MINUTE), extractor_kline(current)])
    assert out.inserted_count == 1 and out.failed == 1 and "has not closed" in out.errors[0].reason
    assert mongo_store.collection("klines").count_documents({"open_time": current}) == 0


def test_the_exchanges_kline_replaces_an_extractors_and_nothing_replaces_the_exchanges(
    mongo_store: MongoStore,
) -> None:
    coll = mongo_store.collection("klines")
    ds = resolve("klines_1m")
    extractor = to_document(ds, extractor_kline(MINUTE))
    mongo_store.insert_idempotent("klines", [extractor])
    ws = {**extractor, "close": "1", "source": "ws", "extractor_version": None}
    ws.pop("extractor_source")
    rest = {**ws, "close": "2", "source": "rest"}
    assert write_klines(coll, [ws]).modified == 1  # the extractor's row gave way
    assert write_klines(coll, [rest]).duplicates == 1  # the websocket's stays
    assert mongo_store.insert_idempotent("klines", [extractor]).duplicates == 1  # so it does against an extractor
    stored = coll.find_one({"_id": extractor["_id"]})
    assert stored is not None and stored["source"] == "ws" and "extractor_source" not in stored
    # REST over an extractor's minute also wins; an empty minute is simply inserted.
    later = to_document(ds, extractor_kline(MINUTE + MINUTE_MS))
    mongo_store.insert_idempotent("klines", [later])
    empty = to_document(ds, extractor_kline(MINUTE + 2 * MINUTE_MS))
    res = write_klines(coll, [{**later, "source": "rest"}, {**empty, "source": "rest"}])
    assert (res.modified, res.upserted) == (1, 1)


def api_for(store: MongoStore, meta_url: str) -> Any:
    meta = MetadataStore(meta_url)
    meta.migrate()
    settings = load_settings(
        mongo_url=store.url,
        mongo_db=store.db_name,
        metadata_url=meta_url,
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
    )
    tokens = SecretStr(json.dumps({EXTRACTOR: ["klines:write", "read"]}))
    return serve(create_app(settings, mongo=store, meta=meta, api_settings=ApiSettings(tokens=tokens)))


@pytest.fixture
def ingest_store(ingest: Ingest) -> Iterator[MongoStore]:
    ingest.store.ensure_indexes()
    yield ingest.store


def test_an_extractor_kline_first_then_the_websocket_kline_the_stored_and_served_one_is_the_exchanges(
    ingest: Ingest, ingest_store: MongoStore, tmp_path: Any
) -> None:
    with api_for(ingest_store, f"sqlite:///{tmp_path / 'meta.db'}") as url, DMClient(url, token=EXTRACTOR) as client:
        first = client.insert_klines("1m", [extractor_kline(MINUTE, price="86000.5")])
        assert first.inserted_count == 1
        proc = ingest.start()
        ingest.publish([ws_kline(MINUTE, close="87010.20"), ws_kline(MINUTE + MINUTE_MS, "1", closed=False)])
        ingest.drain(proc)
        # The extractor sends its (overlapping) window again: a duplicate, never an overwrite.
        again = client.insert_klines("1m", [extractor_kline(MINUTE, price="86000.5")])
        assert again.inserted_count == 0 and again.duplicates == 1
        served = client.find("mongodb", "klines_1m", {"symbol": "BTCUSDT"}).data
    stored = ingest_store.collection("klines").find_one({"_id": f"BTCUSDT:1m:{MINUTE}"})
    assert stored is not None and stored["source"] == "ws" and str(stored["close"]) == "87010.20"
    assert "extractor_version" not in stored
    assert [(k["open_time"], k["close_price"], k["source"]) for k in served] == [
        (iso(MINUTE), "87010.20", "ws")  # the open kline of the next minute is not stored
    ]
