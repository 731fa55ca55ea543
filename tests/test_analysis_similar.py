"""Pattern search: the computation against a brute-force oracle, the precomputed series, the asset and the route."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from api.app import create_app
from api.models import SimilarPage
from api.testing import serve
from dm_assets.analytics.pattern_assets import PATTERN_OP, pattern_series
from dm_assets.analytics.pattern_series import COLLECTION, candles_series, load_series, write_series
from dm_assets.analytics.patterns import (
    DenseSeries,
    HistoryTooShort,
    QueryIncomplete,
    brute_force_profile,
    mass_profile,
    search,
    top_k_non_overlapping,
    what_followed,
)
from dm_assets.analytics.schedules import pattern_series_schedule
from dm_assets.catalog.build import refresh_catalog
from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME
from dm_resources.candle_store import CandleStore
from dm_resources.embedded import free_port
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.resources import ResourceSet
from dm_resources.settings import load_settings

HOUR = 3_600_000
W = 24


def walk(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))


def planted(n: int = 600) -> tuple[np.ndarray, list[int]]:
    """A random walk whose last W bars repeat, scaled and shifted, at two known places (with a rally after one)."""
    closes = walk(n)
    shape = closes[-W:]
    spots = [100, 300]
    for i, scale in zip(spots, (0.5, 2.0), strict=True):
        closes[i : i + W] = shape * scale + 7.0
    closes[100 + W : 100 + 2 * W] = closes[100 + W - 1] * np.linspace(1.01, 1.10, W)  # a rally after the first
    return closes, spots


# --------------------------------------------------------------------------- computation


def test_mass_equals_the_brute_force_scan_including_gaps_and_flat_windows() -> None:
    t = walk(5_000)
    t[1000:1100] = 55.0  # flat: constant windows
    t[2000] = np.nan  # a missing bar: every window holding it is never a match
    q = t[-60:].copy()
    fast, slow = mass_profile(q, t), brute_force_profile(q, t, block=1_000)
    finite = np.isfinite(slow)
    assert np.array_equal(finite, np.isfinite(fast)) and (~finite).sum() == 60
    assert np.allclose(fast[finite], slow[finite], atol=1e-6)
    assert slow[1000] == pytest.approx(np.sqrt(60))  # flat window vs a varying query
    assert np.allclose(brute_force_profile(np.full(8, 3.0), t[990:1050])[10:20], 0.0)


def test_search_finds_the_planted_windows_and_what_followed() -> None:
    closes, spots = planted()
    s = DenseSeries("BTCUSDT", 0, HOUR, closes)
    res = search(s, {"BTCUSDT": s}, W, 3)
    assert {m.index for m in res.matches[:2]} == set(spots)
    assert all(m.distance < 1e-4 for m in res.matches[:2]) and res.matches[2].distance > 0.1
    rally = next(m for m in res.matches if m.index == 100)
    assert rally.forward_return == pytest.approx(closes[100 + 2 * W - 1] / closes[100 + W - 1] - 1)
    assert rally.forward_return == pytest.approx(0.10) and rally.max_drawdown == 0.0
    assert rally.start == 100 * HOUR and rally.end == (100 + W) * HOUR
    starts = sorted(m.index for m in res.matches)
    assert all(b - a >= W for a, b in itertools.pairwise(starts))  # no two overlap
    assert max(starts) + W <= s.n - W  # none overlaps the query window
    assert res.searched == {"BTCUSDT": s.n - 2 * W + 1}
    # the oracle agrees on the matches, not only on the distances
    slow = search(s, {"BTCUSDT": s}, W, 3, profile=brute_force_profile)
    assert [(m.symbol, m.start) for m in slow.matches] == [(m.symbol, m.start) for m in res.matches]


def test_across_symbols_matches_come_from_every_listed_history() -> None:
    closes, _ = planted()
    btc = DenseSeries("BTCUSDT", 0, HOUR, closes)
    other = walk(600, seed=9)
    other[50 : 50 + W] = closes[-W:] * 3.0 - 1.0
    eth = DenseSeries("ETHUSDT", 0, HOUR, other)
    res = search(btc, {"ETHUSDT": eth}, W, 2)
    assert res.matches[0].symbol == "ETHUSDT" and res.matches[0].start == 50 * HOUR
    assert res.matches[0].distance < 1e-4 and set(res.searched) == {"ETHUSDT"}
    # ETH's own latest window is not a candidate: it overlaps the query window in time
    assert all(m.end <= btc.end - W * HOUR for m in res.matches)


def test_greedy_selection_excludes_overlaps_and_respects_the_last_start() -> None:
    prof = np.array([5.0, 0.1, 0.2, 0.3, 4.0, 0.5, 9.0, 0.05])
    assert top_k_non_overlapping(prof, 3, 2, last_start=6) == [1, 3, 5]
    assert top_k_non_overlapping(prof, 5, 3, last_start=6) == [1, 5]  # 0.2/0.3 overlap 1; 9.0 overlaps 5
    assert top_k_non_overlapping(np.full(4, np.inf), 2, 2, last_start=3) == []
    ret, dd = what_followed(np.array([1.0, 2.0, 2.0, 3.0, 1.5, 2.4]), 0, 3)
    assert ret == pytest.approx(0.2) and dd == pytest.approx(-0.5)


def test_too_short_a_history_or_a_gap_in_the_latest_window_is_refused() -> None:
    with pytest.raises(HistoryTooShort, match="47 bars of history, fewer than two windows"):
        s = DenseSeries("BTCUSDT", 0, HOUR, walk(47))
        search(s, {"BTCUSDT": s}, W, 1)
    gap = walk(200)
    gap[-3] = np.nan
    s = DenseSeries("BTCUSDT", 0, HOUR, gap)
    with pytest.raises(QueryIncomplete, match="latest 24 bars of BTCUSDT have 1 missing"):
        search(s, {"BTCUSDT": s}, W, 1)
    tail = np.concatenate([walk(200), [np.nan, np.nan]])  # trailing missing bars: the series ends at its data
    s = DenseSeries("BTCUSDT", 0, HOUR, tail)
    assert search(s, {"BTCUSDT": s}, W, 1).query.n == 200


# --------------------------------------------------------------------------- store, asset, route


def frame(start: int, closes: np.ndarray, flag_at: int | None = None) -> pd.DataFrame:
    n = closes.size
    df = pd.DataFrame(
        {
            "open_time": start + np.arange(n, dtype=np.int64) * HOUR,
            "open": closes,
            "high": closes * 1.001,
            "low": closes * 0.999,
            "close": closes,
            "volume": np.full(n, 3.0),
            "quote_volume": closes * 3.0,
            "taker_buy_volume": np.full(n, 1.0),
            "taker_buy_quote_volume": closes,
            "trades": np.full(n, 5, dtype=np.int64),
            "source": "kline",
            "flags": [["bad_print"] if i == flag_at else [] for i in range(n)],
        }
    )
    return df


def put_closes(store: MongoStore, symbol: str, start: int, closes: np.ndarray, flag_at: int | None = None) -> None:
    CandleStore(store).sync_range(symbol, "1h", start, start + closes.size * HOUR, frame(start, closes, flag_at))


@pytest.fixture
def hourly(mongo_store: MongoStore) -> tuple[MongoStore, int, np.ndarray]:
    """600 hours of BTCUSDT up to the last closed hour (one flagged bad print), 600 of ETHUSDT, 30 of SOLUSDT."""
    now = int(time.time() * 1000)
    end = now - now % HOUR
    start = end - 600 * HOUR
    closes, _ = planted()
    put_closes(mongo_store, "BTCUSDT", start, closes, flag_at=10)
    put_closes(mongo_store, "ETHUSDT", start, walk(600, seed=11))
    put_closes(mongo_store, "SOLUSDT", end - 30 * HOUR, walk(30, seed=12))
    return mongo_store, start, closes


def test_the_precomputed_series_and_the_candles_give_the_same_history(
    hourly: tuple[MongoStore, int, np.ndarray],
) -> None:
    store, start, closes = hourly
    end = start + 600 * HOUR
    direct = candles_series(store, "BTCUSDT", "1h", start, end)
    assert np.isnan(direct.closes[10]) and np.allclose(np.delete(direct.closes, 10), np.delete(closes, 10))
    before, src = load_series(store, "BTCUSDT", "1h", end)
    assert src == {"precomputed_bars": 0, "candle_bars": 599}  # nothing precomputed: all from the candles
    res = write_series(store, "BTCUSDT", "1h", end - 5 * HOUR)  # the asset ran five hours ago
    assert res.written == res.chunks >= 1 and res.bars == 594
    assert write_series(store, "BTCUSDT", "1h", end - 5 * HOUR).written == 0  # unchanged chunks are not rewritten
    after, src = load_series(store, "BTCUSDT", "1h", end)
    assert src == {"precomputed_bars": 594, "candle_bars": 5}
    assert np.array_equal(before.closes, after.closes, equal_nan=True)


def test_the_asset_writes_each_symbols_series_on_the_analytics_cadence(
    hourly: tuple[MongoStore, int, np.ndarray], mongo_url: str, tmp_path: Path
) -> None:
    store, start, _ = hourly
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["BTCUSDT"])
    settings = load_settings(mongo_url=mongo_url, mongo_db=store.db.name, metadata_url=f"sqlite:///{tmp_path}/m.db")
    resources = ResourceSet(settings)
    as_of = start + 600 * HOUR
    result = materialize(
        [pattern_series],
        instance=instance,
        partition_key="BTCUSDT",
        resources=resources.as_dict(),
        run_config={"ops": {PATTERN_OP: {"config": {"as_of_ms": as_of}}}},
    )
    assert result.success
    docs = list(store.db[COLLECTION].find({"symbol": "BTCUSDT", "interval": "1h"}))
    assert docs and sum(int(np.isfinite(np.frombuffer(d["closes"], "<f8")).sum()) for d in docs) == 599
    mats = result.asset_materializations_for_node(PATTERN_OP)
    assert mats[0].metadata["chunks_rewritten"].value >= 1
    # the catalog lists the series per symbol × interval (lineage: tests/test_catalog.py)
    meta = MetadataStore(settings.metadata_url)
    meta.migrate()
    refresh_catalog(store, meta, now=as_of, symbols=["BTCUSDT"])
    entry = next(d for d in meta.list_datasets() if d.kind == "pattern_series" and d.interval == "1h")
    assert entry.symbol == "BTCUSDT" and entry.collection == COLLECTION and entry.row_count == len(docs)
    assert any(f.name == "closes" and f.type == "binary" for f in entry.schema_)
    meta.close()
    assert pattern_series_schedule.cron_schedule == "*/15 * * * *"


def test_similar_route_answers_and_refuses_bad_parameters(
    hourly: tuple[MongoStore, int, np.ndarray], mongo_url: str, tmp_path: Path
) -> None:
    store, start, _closes = hourly
    meta = MetadataStore(f"sqlite:///{tmp_path / 'meta.db'}")
    meta.migrate()
    settings = load_settings(
        mongo_url=mongo_url,
        mongo_db=store.db.name,
        metadata_url=str(meta.url),
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
    )
    app = create_app(settings, mongo=store, meta=meta)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        resp = c.get("/analysis/similar", params={"pair": "btcusdt", "period": "1h", "window": W, "k": 3})
        assert resp.status_code == 200, resp.text
        page = SimilarPage.model_validate(resp.json())
        assert page.symbols == ["BTCUSDT"] and page.query.end == start + 600 * HOUR
        assert {m.start for m in page.matches[:2]} == {start + 100 * HOUR, start + 300 * HOUR}
        rally = next(m for m in page.matches if m.start == start + 100 * HOUR)
        assert rally.forward_return == pytest.approx(0.10, abs=1e-6) and rally.max_drawdown == 0.0
        assert page.source == {"precomputed_bars": 0, "candle_bars": 599}
        assert page.summary.matches == 3

        across = SimilarPage.model_validate(
            c.get("/analysis/similar", params={"pair": "BTCUSDT", "window": W, "symbols": "ETHUSDT,SOLUSDT"}).json()
        )
        assert across.searched["SOLUSDT"] == 0 and across.searched["ETHUSDT"] > 0
        assert {m.symbol for m in across.matches} == {"ETHUSDT"}

        def refused(params: dict[str, Any], status: int, param: str) -> str:
            r = c.get("/analysis/similar", params={"pair": "BTCUSDT", **params})
            assert r.status_code == status, r.text
            assert any(param in d["loc"] for d in r.json()["detail"]), r.text
            return str(r.json()["detail"])

        refused({"window": 7}, 422, "window")
        refused({"window": 1001}, 422, "window")
        refused({"k": 0}, 422, "k")
        refused({"k": 51}, 422, "k")
        refused({"period": "3m"}, 422, "period")
        many = ",".join(f"S{i:02d}USDT" for i in range(21))
        assert "at most 20" in refused({"symbols": many}, 422, "symbols")
        refused({"symbols": "NOPEUSDT"}, 404, "symbols")
        five = "BTCUSDT,ETHUSDT,SOLUSDT,XRPUSDT,BNBUSDT"
        assert "list at most 4 symbols for 1m" in refused({"period": "1m", "symbols": five}, 422, "symbols")
        assert "fewer than two windows" in refused({"window": 301}, 422, "window")
        short = refused({"pair": "SOLUSDT", "window": 16}, 422, "window")
        assert "SOLUSDT has 30 bars" in short and "1h" in short
    meta.close()
