"""Each kind of fault through the real pipeline, detected, blocking, logged, scored and repaired.

Real SecantusDB, real metadata store (SQLite), the fake exchange over HTTP, Dagster
``materialize`` with an instance. Every scenario: raw data with one fault → the candles
run fails the right check with the right severity, blocking checks skip everything
downstream, ``audit_logs`` has the detection, the health row drops and says why → the gap
sensor asks for the partition → the repair run fixes the minute from REST (or keeps it
flagged when REST has nothing better) and downstream builds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from bson.decimal128 import Decimal128
from dagster import AssetKey, DagsterInstance, build_sensor_context, materialize
from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult

from dm_assets.candles.assets import CANDLE_ASSETS
from dm_assets.candles.sensors import gap_sensor
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_assets.quality.assets import QUALITY_ASSETS
from dm_resources.binance import Kline
from dm_resources.candle_store import CandleStore
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from ingest_service.pricepath import minute_trades
from tests.dagster_helpers import materializations, materialized
from tests.fake_exchange import FakeExchange

# Yesterday: inside the gap sensor's look-back, and over (the exchange's wall clock closed every minute).
DAY = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
START, END = day_bounds_ms(DAY)
M = 60_000
SYMBOL = "BTCUSDT"
PK = partition_key(DAY, SYMBOL)
PRICE_FIELDS = ("open", "high", "low", "close")


@pytest.fixture
def meta(resources: ResourceSet) -> Iterator[MetadataStore]:
    store = MetadataStore(resources.settings.metadata_url)
    store.migrate()
    yield store
    store.close()


def ws_klines(ex: FakeExchange, skip: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    rows = ex.klines(SYMBOL, "1m", START, END)
    return [Kline.from_row(r).to_document(SYMBOL, "1m", source="ws") for i, r in enumerate(rows) if i not in skip]


def agg_trades(ex: FakeExchange, minutes: range) -> list[dict[str, Any]]:
    """Aggregated trades whose aggregate is the exchange's kline of each minute (consecutive ids)."""
    times, cols = ex.market.minutes(SYMBOL, START + minutes.start * M, START + minutes.stop * M)
    rng = np.random.default_rng(7)
    docs, agg, raw = [], 1_000, 50_000
    for j, t in enumerate(times.tolist()):
        row = {c: int(v[j]) for c, v in cols.items()}
        for tr in minute_trades(row, rng, target=12):
            agg += 1
            docs.append(
                {
                    "_id": f"{SYMBOL}:{agg}",
                    "symbol": SYMBOL,
                    "agg_id": agg,
                    "price": Decimal128(f"{tr.price / 100:.2f}"),
                    "qty": Decimal128(f"{tr.qty / 1000:.3f}"),
                    "first_trade_id": raw + 1,
                    "last_trade_id": raw + tr.raw_trades,
                    "trade_time": t + tr.offset_ms,
                    "event_time": t + tr.offset_ms + 1,
                    "buyer_is_maker": tr.buyer_is_maker,
                }
            )
            raw += tr.raw_trades
    return docs


def scale(doc: dict[str, Any], field: str, factor: float) -> None:
    doc[field] = Decimal128(f"{float(doc[field].to_decimal()) * factor:.2f}")


def run(instance: DagsterInstance, resources: ResourceSet) -> ExecuteInProcessResult:
    return materialize(
        [*CANDLE_ASSETS, *QUALITY_ASSETS],
        instance=instance,
        partition_key=PK,
        resources=resources.as_dict(),
        raise_on_error=False,
    )


def checks_of(result: ExecuteInProcessResult, interval: str = "1m") -> dict[str, Any]:
    key = AssetKey(["candles", f"candles_{interval}"])
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == key}


def candle(store: MongoStore, i: int, interval: str = "1m") -> dict[str, Any]:
    step = {"1m": M, "5m": 5 * M, "1h": 60 * M}[interval]
    (doc,) = CandleStore(store).read_range(SYMBOL, interval, START + i * step, START + (i + 1) * step)
    return doc


def health_1m(meta: MetadataStore) -> Any:
    (row,) = meta.health(symbol=SYMBOL, interval="1m")
    return row


def events(meta: MetadataStore, check: str) -> list[str]:
    return [(r.details or {}).get("event", "") for r in meta.audit_logs(symbol=SYMBOL, check_name=check, limit=500)]


def sensor_asks_for_partition(instance: DagsterInstance, resources: ResourceSet) -> bool:
    with build_sensor_context(instance=instance, resources=resources.as_dict()) as ctx:
        result = gap_sensor(ctx)
    return any(r.partition_key == PK for r in (result.run_requests or []))


def assert_equals_exchange(store: MongoStore, ex: FakeExchange, i: int) -> None:
    want = Kline.from_row(ex.klines(SYMBOL, "1m", START + i * M, START + (i + 1) * M)[0])
    got = candle(store, i)
    for f in PRICE_FIELDS:
        assert got[f] == pytest.approx(float(getattr(want, f)), rel=1e-12), f


def assert_blocked_then_repaired(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
    *,
    check: str,
    minute: int,
) -> None:
    """The common arc for a fault REST can repair."""
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    first = run(instance, resources)
    result = checks_of(first)[check]
    assert not result.passed and result.severity.value == "ERROR"
    assert START + minute * M in result.metadata["samples"].value
    # Blocking: nothing downstream of candles_1m ran.
    assert materialized(first, "candles/candles_1m")
    for node in ("candles/candles_5m", "candles/candles_1h", "quality/audit_results", "quality/health_scores"):
        assert not materialized(first, node), node
    assert "detected" in events(meta, check)
    h = health_1m(meta)
    assert h.score < 100 and check in h.details["failed_checks"]
    assert candle(mongo_store, minute)["flags"]
    # The gap sensor sees the unrepaired flag and asks for the partition; its run repairs from REST.
    assert sensor_asks_for_partition(instance, resources)
    second = run(instance, resources)
    assert all(c.passed for c in checks_of(second).values()), {
        k: v.metadata["count"].value for k, v in checks_of(second).items()
    }
    assert materialized(second, "candles/candles_5m") and materialized(second, "quality/health_scores")
    assert "repaired" in events(meta, check)
    fixed = candle(mongo_store, minute)
    assert fixed["flags"] == [] and fixed["source"] == "rest"
    assert_equals_exchange(mongo_store, exchange, minute)
    assert health_1m(meta).score == 100.0
    assert not sensor_asks_for_partition(instance, resources)
    # A further run keeps the repair (the raw kline now is the exchange's REST row).
    third = run(instance, resources)
    assert all(c.passed for c in checks_of(third).values())


def test_bad_print_in_websocket_kline_is_blocked_and_repaired(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
) -> None:
    docs = ws_klines(exchange)
    scale(docs[700], "high", 1.8)  # one websocket kline with a high 1.8× the price
    mongo_store.insert_idempotent("klines", docs)
    assert_blocked_then_repaired(instance, resources, mongo_store, meta, exchange, check="no_bad_prints", minute=700)


def test_impossible_ohlc_is_blocked_and_repaired(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
) -> None:
    docs = ws_klines(exchange)
    docs[500]["low"] = Decimal128(f"{float(docs[500]['high'].to_decimal()) * 1.001:.2f}")  # low above high
    mongo_store.insert_idempotent("klines", docs)
    assert_blocked_then_repaired(instance, resources, mongo_store, meta, exchange, check="ohlc_sane", minute=500)


def test_bad_print_in_trades_is_blocked_and_repaired(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
) -> None:
    # No websocket klines for minutes 800..805: trades (complete ids) build them; one trade is a bad print.
    mongo_store.insert_idempotent("klines", ws_klines(exchange, skip=set(range(800, 806))))
    trades = agg_trades(exchange, range(799, 807))
    in_802 = [d for d in trades if START + 802 * M <= d["trade_time"] < START + 803 * M]
    scale(in_802[len(in_802) // 2], "price", 2.4)
    mongo_store.insert_idempotent("agg_trades", trades)
    assert_blocked_then_repaired(instance, resources, mongo_store, meta, exchange, check="no_bad_prints", minute=802)


def test_source_disagreement_is_logged_with_both_values_and_repaired(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
) -> None:
    mongo_store.insert_idempotent("klines", ws_klines(exchange))
    trades = agg_trades(exchange, range(899, 907))
    last_902 = [d for d in trades if START + 902 * M <= d["trade_time"] < START + 903 * M][-1]
    scale(last_902, "price", 1.001)  # the trades' close of 09:02 differs from the kline's by 0.1 %
    mongo_store.insert_idempotent("agg_trades", trades)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    first = run(instance, resources)
    checks = checks_of(first)
    assert not checks["sources_agree"].passed and checks["sources_agree"].severity.value == "ERROR"
    assert checks["no_bad_prints"].passed  # the kline itself is fine; only the sources disagree
    (row,) = [r for r in meta.audit_logs(symbol=SYMBOL, check_name="sources_agree") if r.details.get("event")]
    disagreement = row.details["disagreement"]
    assert disagreement["sources"] == ["kline", "agg_trades"] and disagreement["open_time"] == START + 902 * M
    kline_close = float(ws_klines(exchange)[902]["close"].to_decimal())
    assert disagreement["values"]["close"] == {"kline": kline_close, "agg_trades": pytest.approx(kline_close * 1.001)}
    assert_blocked_then_repaired_tail(instance, resources, mongo_store, meta, exchange, "sources_agree", 902)


def assert_blocked_then_repaired_tail(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
    check: str,
    minute: int,
) -> None:
    assert health_1m(meta).score < 100
    assert sensor_asks_for_partition(instance, resources)
    second = run(instance, resources)
    assert all(c.passed for c in checks_of(second).values())
    assert "repaired" in events(meta, check)
    assert candle(mongo_store, minute)["flags"] == []
    assert_equals_exchange(mongo_store, exchange, minute)
    assert health_1m(meta).score == 100.0


def test_bad_print_in_exchange_rest_row_is_kept_flagged_and_served(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
) -> None:
    """REST is the best source there is: a bad REST row is verified once more, then kept and flagged."""
    exchange.bad_prints[(SYMBOL, START + 600 * M)] = 2.4
    mongo_store.insert_idempotent("klines", ws_klines(exchange, skip={600}))  # the hole REST fills
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    first = run(instance, resources)
    result = checks_of(first)["no_bad_prints"]
    assert not result.passed and result.severity.value == "ERROR"
    assert not materialized(first, "candles/candles_1h")
    assert sensor_asks_for_partition(instance, resources)
    second = run(instance, resources)
    result = checks_of(second)["no_bad_prints"]
    assert not result.passed and result.severity.value == "WARN"  # kept: fails, visible, not blocking
    assert materialized(second, "candles/candles_1h") and materialized(second, "quality/health_scores")
    assert "kept" in events(meta, "no_bad_prints")
    kept = candle(mongo_store, 600)
    assert kept["flags"] == ["bad_print", "verified"] and kept["source"] == "rest"
    hour = candle(mongo_store, 10, "1h")
    assert {"bad_print", "verified"} <= set(hour["flags"])  # carried up: the 1h candle contains it
    h = health_1m(meta)
    assert 0 < h.score < 100 and h.details["failed_checks"]["no_bad_prints"]["severity"] == "WARN"
    (scores,) = materializations(second, "quality/health_scores")
    assert "no_bad_prints WARN ×1" in scores.metadata["scores"].value  # the operator's table says why
    assert not sensor_asks_for_partition(instance, resources)  # verified: nothing more to ask REST
    requests = len(exchange.requests_to("/fapi/v1/klines"))
    run(instance, resources)
    assert len(exchange.requests_to("/fapi/v1/klines")) == requests  # not asked again


def test_hour_with_exchange_outage_is_derived_after_one_run(
    instance: DagsterInstance,
    resources: ResourceSet,
    mongo_store: MongoStore,
    meta: MetadataStore,
    exchange: FakeExchange,
) -> None:
    """Point 7: a 5-minute exchange outage does not hold the 1h candle back for three attempts."""
    holes = range(10 * 60 + 20, 10 * 60 + 25)
    exchange.holes.update((SYMBOL, START + i * M) for i in holes)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    one_m, one_h = AssetKey(["candles", "candles_1m"]), AssetKey(["candles", "candles_1h"])
    result = materialize(
        CANDLE_ASSETS,
        selection=[one_m, one_h],  # candles_1m and candles_1h only (the step is subsettable)
        instance=instance,
        partition_key=PK,
        resources=resources.as_dict(),
    )
    gaps_1m = checks_of(result)["no_gaps"]
    assert not gaps_1m.passed and gaps_1m.severity.value == "WARN" and gaps_1m.metadata["count"].value == 5
    assert checks_of(result, "1h")["no_gaps"].passed
    hour = candle(mongo_store, 10, "1h")
    (theirs,) = exchange.klines(SYMBOL, "1h", START + 10 * 60 * M, START + 11 * 60 * M)
    want = Kline.from_row(theirs)
    for f in (*PRICE_FIELDS, "volume", "quote_volume"):
        assert hour[f] == pytest.approx(float(getattr(want, f)), rel=1e-12), f
    assert hour["trades"] == want.trades
    assert hour["flags"] == ["provisional"]  # confirmed once the exchange has answered 3 times
    for _ in range(2):
        materialize(
            CANDLE_ASSETS, selection=[one_m], instance=instance, partition_key=PK, resources=resources.as_dict()
        )
    again = materialize(
        CANDLE_ASSETS, selection=[one_h], instance=instance, partition_key=PK, resources=resources.as_dict()
    )
    assert checks_of(again, "1h")["no_gaps"].passed
    assert candle(mongo_store, 10, "1h")["flags"] == []  # confirmed
