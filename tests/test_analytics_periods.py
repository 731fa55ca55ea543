"""Analytics for every candle period the API accepts, and a 422 naming them for any other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.params import CANDLE_PERIODS
from api.testing import serve
from dm_assets.analytics import build as abuild
from dm_assets.candles import build as cbuild
from dm_assets.partitions import day_bounds_ms
from dm_resources.binance import BinanceClient
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings
from tests.fake_exchange import FakeExchange

DAYS = ("2026-03-09", "2026-03-10")
END = day_bounds_ms(DAYS[-1])[1]
NOW = END + 3_600_000
SYMBOL = "BTCUSDT"
BARS_PER_DAY = {"1m": 1440, "5m": 288, "15m": 96, "1h": 24, "4h": 6, "1d": 1}


@pytest.fixture
def seeded(mongo_store: MongoStore, tmp_path: Path) -> Iterator[tuple[MongoStore, str]]:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    meta = MetadataStore(url)
    meta.migrate()
    with FakeExchange(now_ms=NOW) as ex:
        ex.start()
        client = BinanceClient(ex.url, now_ms=lambda: NOW, sleep=lambda s: None)
        for day in DAYS:
            cbuild.build_1m_day(mongo_store, meta, client, SYMBOL, day, now=NOW)
            for iv in ("5m", "15m", "1h", "4h", "1d"):
                cbuild.build_higher_day(mongo_store, meta, SYMBOL, day, iv, now=NOW)
    meta.close()
    yield mongo_store, url


def test_every_api_period_is_computed_for_every_candle_kind(seeded: tuple[MongoStore, str]) -> None:
    store, meta_url = seeded
    assert set(abuild.CANDLE_INTERVALS) == set(CANDLE_PERIODS)
    docs = abuild.symbol_documents(store, SYMBOL, END, kinds=abuild.CANDLE_KINDS)
    got = {(d["kind"], d["interval"]) for d in docs}
    assert got == {(k, iv) for k in abuild.CANDLE_KINDS for iv in CANDLE_PERIODS}
    for d in docs:
        spec = next(s for s in abuild.CANDLE_SPECS if s.interval == d["interval"])
        days_in_window = min(len(DAYS), spec.lookback_ms // 86_400_000)
        if d["kind"] == "volatility":
            assert d["values"]["bars"] == BARS_PER_DAY[d["interval"]] * days_in_window, d["interval"]
        assert d["window_end"] == END
    corr = abuild.correlation_documents(store, [SYMBOL], END)
    assert {d["interval"] for d in corr} == set(CANDLE_PERIODS)

    store.upsert("analytics", docs)
    settings = load_settings(mongo_url=store.url, mongo_db=store.db_name, metadata_url=meta_url)
    meta = MetadataStore(meta_url)
    app = create_app(settings, mongo=store, meta=meta)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        for kind in ("volatility", "volume", "trend"):
            for period in CANDLE_PERIODS:
                r = http.get(f"/analysis/{kind}", params={"pair": SYMBOL, "period": period})
                assert r.status_code == 200 and r.json()["count"] == 1, (kind, period, r.text)
        r = http.get("/analysis/volatility", params={"pair": SYMBOL, "period": "3m"})
        assert r.status_code == 422
        msg = r.json()["detail"][0]["msg"]
        assert r.json()["detail"][0]["loc"] == ["query", "period"] and "1m, 5m, 15m, 1h, 4h, 1d" in msg
        assert http.get("/analysis/spread", params={"pair": SYMBOL, "period": "1m"}).status_code == 422
        assert http.get("/analysis/correlation", params={"period": "2h"}).status_code == 422
    meta.close()
