"""MongoStore against a real SecantusDB: idempotent writes, exact range reads, latest-N."""

from __future__ import annotations

from decimal import Decimal

import pytest
from bson.decimal128 import Decimal128
from pymongo.errors import AutoReconnect, OperationFailure
from tenacity import wait_none

from dm_resources.mongo import COLLECTIONS, LAYER_INDEXES, MongoStore, mongo_retry


def _trades(symbol: str, n: int, start: int = 1_700_000_000_000, step: int = 1000) -> list[dict]:
    return [
        {
            "_id": f"{symbol}:{i}",
            "symbol": symbol,
            "agg_id": i,
            "trade_time": start + i * step,
            "price": Decimal128("27123.123456789012345"),
            "qty": Decimal128("0.001"),
        }
        for i in range(n)
    ]


def test_same_batch_twice_leaves_same_count(mongo_store: MongoStore) -> None:
    docs = _trades("BTCUSDT", 1000)
    first = mongo_store.insert_idempotent("agg_trades", docs)
    assert (first.inserted, first.duplicates) == (1000, 0)
    second = mongo_store.insert_idempotent("agg_trades", docs)
    assert (second.inserted, second.duplicates) == (0, 1000)
    assert mongo_store.count("agg_trades", "BTCUSDT") == 1000


def test_partial_overlap_reports_inserted_and_present(mongo_store: MongoStore) -> None:
    mongo_store.insert_idempotent("agg_trades", _trades("ETHUSDT", 500))
    res = mongo_store.insert_idempotent("agg_trades", _trades("ETHUSDT", 800))
    assert (res.inserted, res.duplicates) == (300, 500)
    assert mongo_store.count("agg_trades", "ETHUSDT") == 800


def test_decimal_digits_survive(mongo_store: MongoStore) -> None:
    mongo_store.insert_idempotent("agg_trades", _trades("BTCUSDT", 1))
    doc = mongo_store.read_range("agg_trades", "BTCUSDT")[0]
    assert doc["price"].to_decimal() == Decimal("27123.123456789012345")


def test_range_read_is_exact_window_in_order(mongo_store: MongoStore) -> None:
    start = 1_700_000_000_000
    mongo_store.insert_idempotent("agg_trades", _trades("BTCUSDT", 300, start) + _trades("SOLUSDT", 300, start))
    rows = mongo_store.read_range("agg_trades", "BTCUSDT", start + 100_000, start + 200_000)
    times = [r["trade_time"] for r in rows]
    assert times == [start + i * 1000 for i in range(100, 200)]  # [start, end): end excluded
    assert {r["symbol"] for r in rows} == {"BTCUSDT"}


def test_range_read_with_interval_filter_and_limit(mongo_store: MongoStore) -> None:
    docs = [
        {"_id": f"BTCUSDT:{iv}:{t}", "symbol": "BTCUSDT", "interval": iv, "open_time": t, "close": 1.0}
        for iv in ("1m", "5m")
        for t in range(0, 600_000, 60_000)
    ]
    mongo_store.upsert("candles", docs)
    rows = mongo_store.read_range("candles", "BTCUSDT", 0, None, extra={"interval": "1m"}, limit=3)
    assert [(r["interval"], r["open_time"]) for r in rows] == [("1m", 0), ("1m", 60_000), ("1m", 120_000)]


def test_latest_n_oldest_first(mongo_store: MongoStore) -> None:
    start = 1_700_000_000_000
    mongo_store.insert_idempotent("agg_trades", _trades("BTCUSDT", 5000, start))
    last_time = start + 4999 * 1000
    rows = mongo_store.latest("agg_trades", "BTCUSDT", 10, now_ms=last_time + 86_400_000 * 30, initial_window_ms=60_000)
    assert [r["agg_id"] for r in rows] == list(range(4990, 5000))
    assert mongo_store.latest("agg_trades", "NOPE", 5) == []
    everything = mongo_store.latest("agg_trades", "BTCUSDT", 10_000, now_ms=last_time)
    assert len(everything) == 5000


def test_upsert_is_idempotent(mongo_store: MongoStore) -> None:
    docs = [{"_id": "BTCUSDT:1m:0", "symbol": "BTCUSDT", "interval": "1m", "open_time": 0, "close": 1.5}]
    assert mongo_store.upsert("candles", docs).upserted == 1
    again = mongo_store.upsert("candles", docs)
    assert (again.upserted, again.modified) == (0, 0)
    assert mongo_store.count("candles") == 1


def test_missing_id_and_unknown_collection_are_clear_errors(mongo_store: MongoStore) -> None:
    with pytest.raises(ValueError, match="no deterministic _id"):
        mongo_store.insert_idempotent("agg_trades", [{"symbol": "X"}])
    with pytest.raises(KeyError, match="unknown collection 'trades'"):
        mongo_store.collection("trades")


def test_indexes_created_idempotently(mongo_store: MongoStore) -> None:
    mongo_store.ensure_indexes()  # second call: no error, no new index
    for spec in COLLECTIONS.values():
        info = mongo_store.db[spec.name].index_information()
        assert "_".join(spec.key) in info
        assert bool(info["_".join(spec.key)].get("unique")) == spec.unique
    for ix in LAYER_INDEXES:  # candle buckets and dataset versions, without importing their layer
        info = mongo_store.db[ix.collection].index_information()
        assert bool(info[ix.name].get("unique")) == ix.unique


class _Flaky:
    """Fails with ``errors`` in turn, then answers: how a server that drops connections looks."""

    retry_attempts = 3

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    @mongo_retry(wait=wait_none())
    def call(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_mongo_retry_retries_transient_errors_up_to_the_instances_attempts() -> None:
    flaky = _Flaky(AutoReconnect("reset"), AutoReconnect("reset"))
    assert flaky.call() == "ok" and flaky.calls == 3
    gone = _Flaky(*(AutoReconnect(f"reset {i}") for i in range(3)))
    with pytest.raises(AutoReconnect, match="reset 2"):  # the last error, not a tenacity wrapper
        gone.call()
    assert gone.calls == 3
    refused = _Flaky(OperationFailure("not authorized"))  # not transient: raised at once
    with pytest.raises(OperationFailure):
        refused.call()
    assert refused.calls == 1


def test_ping_false_when_server_unreachable() -> None:
    from dm_resources.embedded import free_port

    store = MongoStore(
        f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", "x", server_selection_timeout_ms=300
    )
    assert store.ping() is False
    store.close()


def test_sync_range_inserts_new_replaces_changed_and_skips_equal(mongo_store: MongoStore) -> None:
    def doc(t: int, close: float) -> dict:
        return {"_id": f"BTCUSDT:1m:{t}", "symbol": "BTCUSDT", "interval": "1m", "open_time": t, "close": close}

    first = mongo_store.sync_range(
        "candles", "BTCUSDT", 0, 600_000, [doc(t, 1.0) for t in range(0, 300_000, 60_000)], extra={"interval": "1m"}
    )
    assert (first.upserted, first.modified) == (5, 0)
    same = mongo_store.sync_range(
        "candles", "BTCUSDT", 0, 600_000, [doc(t, 1.0) for t in range(0, 300_000, 60_000)], extra={"interval": "1m"}
    )
    assert (same.upserted, same.modified) == (0, 0)
    docs = [doc(t, 2.0 if t == 60_000 else 1.0) for t in range(0, 420_000, 60_000)]
    mixed = mongo_store.sync_range("candles", "BTCUSDT", 0, 600_000, docs, extra={"interval": "1m"})
    assert (mixed.upserted, mixed.modified) == (2, 1)
    stored = mongo_store.read_range("candles", "BTCUSDT", 0, 600_000, extra={"interval": "1m"})
    assert [d["close"] for d in stored] == [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]
