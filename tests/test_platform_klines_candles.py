"""Klines written by an extractor through /api/v1 become candles_1m without asking the exchange again.

The extractor's records go over real HTTP (dm_client) into the raw ``klines`` collection;
then a real Dagster materialization of ``candles_1m`` runs against the fake exchange, which
counts every REST request it receives.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from dagster import DagsterInstance, materialize
from pydantic import SecretStr

from api.app import create_app
from api.deps import ApiSettings
from api.testing import serve
from dm_assets.candles import gaps
from dm_assets.candles.assets import CANDLE_ASSETS
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, day_bounds_ms, partition_key
from dm_client import DMClient
from dm_resources.binance import Kline
from dm_resources.candle_store import CandleStore
from dm_resources.embedded import free_port
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import load_settings
from tests.dagster_helpers import materializations
from tests.fake_exchange import FakeExchange

DAY = "2026-03-10"
START, END = day_bounds_ms(DAY)
SYMBOL = "BTCUSDT"
TOKEN = "extractor-token-0123456789"


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def extractor_record(row: list[Any]) -> dict[str, Any]:
    """A Binance kline row as the platform's extractor job sends it."""
    k = Kline.from_row(row)
    return {
        "symbol": SYMBOL,
        "interval": "1m",
        "open_time": iso(k.open_time),
        "close_time": iso(k.close_time),
        "timestamp": iso(k.open_time),
        "open_price": str(row[1]),
        "high_price": str(row[2]),
        "low_price": str(row[3]),
        "close_price": str(row[4]),
        "volume": str(row[5]),
        "quote_asset_volume": str(row[7]),
        "number_of_trades": int(row[8]),
        "taker_buy_base_asset_volume": str(row[9]),
        "taker_buy_quote_asset_volume": str(row[10]),
        "source": "binance_futures_rest",
        "extractor_version": "2.3.1",
        "extracted_at": "2026-03-11T00:05:00Z",
    }


def test_extractor_klines_become_candles_without_rest_requests(
    mongo_store: MongoStore, sqlite_metadata_url: str, exchange: FakeExchange, instance: DagsterInstance
) -> None:
    meta = MetadataStore(sqlite_metadata_url)
    meta.migrate()
    settings = load_settings(
        mongo_url=mongo_store.url,
        mongo_db=mongo_store.db_name,
        metadata_url=sqlite_metadata_url,
        binance_rest_url=exchange.url,
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
    )
    app = create_app(
        settings,
        mongo=mongo_store,
        meta=meta,
        api_settings=ApiSettings(tokens=SecretStr(json.dumps({TOKEN: ["klines:write"]}))),
    )
    rows = exchange.klines(SYMBOL, "1m", START, END)
    assert len(rows) == 1440
    try:
        with serve(app) as url, DMClient(url, token=TOKEN) as client:
            # Two overlapping extractor windows, as the jobs send them.
            first = client.insert_klines("1m", [extractor_record(r) for r in rows[:800]])
            second = client.insert_klines("1m", [extractor_record(r) for r in rows[770:]])
        assert (first.inserted_count, first.duplicates) == (800, 0)
        assert (second.inserted_count, second.duplicates, second.failed) == (640, 30, 0)
    finally:
        meta.close()

    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [SYMBOL])
    rest_before = len(exchange.requests_to("/fapi/v1/klines"))
    result = materialize(
        CANDLE_ASSETS[:1],
        instance=instance,
        partition_key=partition_key(DAY, SYMBOL),
        resources=ResourceSet(settings).as_dict(),
    )
    assert result.success
    mat = materializations(result, "candles/candles_1m")[0]
    assert mat.metadata["rows"].value == 1440
    # No REST request for minutes an extractor already delivered.
    assert len(exchange.requests_to("/fapi/v1/klines")) == rest_before
    # Trusted like our own REST fills (the exchange's REST klines, fetched by the extractor).
    assert json.loads(json.dumps(mat.metadata["by_source"].value)) == {"rest": 1440}

    candles = CandleStore(mongo_store).read_range(SYMBOL, "1m", START, END)
    assert [c["open_time"] for c in candles] == [r[0] for r in rows]
    for c, r in zip(candles[:50], rows[:50], strict=True):
        assert (c["open"], c["high"], c["low"], c["close"]) == tuple(float(x) for x in r[1:5])
        assert c["trades"] == int(r[8])
    # And the gap sensor's view of the day has nothing left to ask for.
    with MetadataStore(sqlite_metadata_url) as m:
        gap, missing = gaps.partition_gap(mongo_store, m, SYMBOL, DAY, END + 3_600_000)
    assert gap.missing == 0 and missing == ()
