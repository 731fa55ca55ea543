"""Pattern search: MASS (stumpy) beside a brute-force numpy z-normalized scan, same inputs, same run.

* ``one_symbol_1m_year``: one year of 1m closes (525,600 bars), window 60, k 5.
* ``twenty_symbols_1h``: 20 symbols × five years of 1h (43,800 bars each), window 60, k 5.

Both searches go through :func:`dm_assets.analytics.patterns.search` (the code the API runs);
only the distance profile differs (``mass_profile`` vs ``brute_force_profile``). The matches must be
identical (symbol, start) and the distances equal to 1e-6; the bench fails otherwise.

* ``store`` (``--store``): the same year of 1m candles written to SecantusDB as day buckets; the
  search's input read from the candles beside the precomputed ``pattern_series`` chunks, and the
  whole ``GET /analysis/similar`` through the API.

    .venv/bin/python bench/bench_patterns.py [--store]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dm_assets.analytics.patterns import (
    DenseSeries,
    SearchResult,
    brute_force_profile,
    search,
    warm_up,
)

MIN, HOUR = 60_000, 3_600_000


def walk(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    closes = 30_000.0 * np.exp(np.cumsum(rng.normal(0, 6e-4, n)))
    closes[rng.integers(0, n, n // 2000)] = np.nan  # a few missing bars, as real history has
    return closes


def timed(fn: Callable[[], SearchResult], repeat: int) -> tuple[SearchResult, list[float]]:
    walls = []
    res = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        walls.append(time.perf_counter() - t0)
    assert res is not None
    return res, walls


def compare(query: DenseSeries, candidates: dict[str, DenseSeries], window: int, k: int, repeat: int) -> Any:
    fast, fast_walls = timed(lambda: search(query, candidates, window, k), repeat)
    slow, slow_walls = timed(lambda: search(query, candidates, window, k, profile=brute_force_profile), 1)
    same = [(m.symbol, m.start) for m in fast.matches] == [(m.symbol, m.start) for m in slow.matches]
    close = all(abs(a.distance - b.distance) < 1e-6 for a, b in zip(fast.matches, slow.matches, strict=True))
    if not (same and close):
        raise SystemExit(f"MASS and the brute-force scan disagree: {fast.matches} vs {slow.matches}")
    mass_s, brute_s = statistics.median(fast_walls), slow_walls[0]
    return {
        "bars_searched": sum(s.n for s in candidates.values()),
        "window": window,
        "k": k,
        "mass_s": round(mass_s, 4),
        "mass_runs_s": [round(x, 4) for x in fast_walls],
        "brute_force_numpy_s": round(brute_s, 3),
        "speedup": round(brute_s / mass_s, 1),
        "identical_matches": same and close,
        "best": fast.matches[0].to_dict(),
    }


def store_part(closes: np.ndarray, window: int, k: int) -> dict[str, Any]:
    import httpx
    import pandas as pd

    from dm_assets.analytics.pattern_series import candles_series, load_series, write_series
    from dm_resources.candle_store import CandleStore
    from dm_resources.embedded import free_port, start_api, start_secantus
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore

    tmp = Path(tempfile.mkdtemp(prefix="bench_patterns_"))
    procs = []
    try:
        port = free_port()
        procs.append(start_secantus(port, tmp / "mongo", cache_size="4G"))
        url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        db = f"bench_patterns_{uuid.uuid4().hex[:8]}"
        store = MongoStore(url, db)
        store.ensure_indexes()
        now = int(time.time() * 1000)
        end = now - now % 86_400_000
        start = end - closes.size * MIN
        cs = CandleStore(store)
        t0 = time.perf_counter()
        for d0 in range(start, end, 86_400_000):
            i = (d0 - start) // MIN
            c = np.nan_to_num(closes[i : i + 1440], nan=float(np.nanmean(closes[i : i + 1440])))
            ot = d0 + np.arange(c.size, dtype=np.int64) * MIN
            frame = pd.DataFrame(
                {"open_time": ot, "open": c, "high": c, "low": c, "close": c, "volume": 1.0, "quote_volume": c}
            ).assign(taker_buy_volume=0.5, taker_buy_quote_volume=c / 2, trades=5, source="kline")
            cs.sync_range("BTCUSDT", "1m", d0, d0 + 86_400_000, frame)
        out: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 1)}
        t0 = time.perf_counter()
        direct = candles_series(store, "BTCUSDT", "1m", start, end)
        out["read_from_candle_buckets_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        wrote = write_series(store, "BTCUSDT", "1m", end)
        out["asset_write_series_s"] = round(time.perf_counter() - t0, 3)
        out["asset_chunks"] = wrote.chunks
        t0 = time.perf_counter()
        again = write_series(store, "BTCUSDT", "1m", end)
        out["asset_rerun_unchanged_s"] = round(time.perf_counter() - t0, 3)
        out["asset_rerun_rewritten"] = again.written
        t0 = time.perf_counter()
        pre, _src = load_series(store, "BTCUSDT", "1m", end)
        out["read_precomputed_s"] = round(time.perf_counter() - t0, 3)
        out["precomputed_over_candles"] = round(out["read_precomputed_s"] / out["read_from_candle_buckets_s"], 2)
        assert np.array_equal(pre.closes[-direct.n :], direct.closes, equal_nan=True), "precomputed != candles"
        meta_url = f"sqlite:///{tmp / 'meta.db'}"
        MetadataStore(meta_url).migrate()
        aport = free_port()
        env = {
            "DM_MONGO_URL": url,
            "DM_MONGO_DB": db,
            "DM_METADATA_URL": meta_url,
            "DM_SYMBOLS": "BTCUSDT",
            "DM_DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{free_port()}/graphql",
        }
        procs.append(start_api(aport, env, log_dir=tmp))
        params = {"pair": "BTCUSDT", "period": "1m", "window": window, "k": k}
        with httpx.Client(base_url=f"http://127.0.0.1:{aport}", timeout=120) as c:
            c.get("/analysis/similar", params=params).raise_for_status()  # numba compiled, caches warm
            walls = []
            for _ in range(5):
                t0 = time.perf_counter()
                r = c.get("/analysis/similar", params=params)
                r.raise_for_status()
                walls.append(time.perf_counter() - t0)
        out["api_similar_1m_year_s"] = round(statistics.median(walls), 3)
        out["api_runs_s"] = [round(x, 3) for x in walls]
        out["api_source"] = r.json()["source"]
        store.client.drop_database(db)
        store.close()
        return out
    finally:
        for p in reversed(procs):
            p.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--store", action="store_true", help="also the store and API part (SecantusDB, ~1 min load)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    warm_up()
    result: dict[str, Any] = {"numba_compile_s": round(time.perf_counter() - t0, 2)}

    year = walk(525_600, seed=1)
    year[-args.window :] = np.nan_to_num(year[-args.window :], nan=30_000.0)
    btc = DenseSeries("BTCUSDT", 0, MIN, year)
    result["one_symbol_1m_year"] = compare(btc, {"BTCUSDT": btc}, args.window, args.k, args.repeat)

    syms = {f"S{i:02d}USDT": DenseSeries(f"S{i:02d}USDT", 0, HOUR, walk(43_800, seed=10 + i)) for i in range(20)}
    first = next(iter(syms.values()))
    first.closes[-args.window :] = np.nan_to_num(first.closes[-args.window :], nan=30_000.0)
    result["twenty_symbols_1h"] = compare(first, syms, args.window, args.k, args.repeat)
    result["targets"] = {
        name: {"at_least_10x": r["speedup"] >= 10, "under_1s": r["mass_s"] < 1.0}
        for name in ("one_symbol_1m_year", "twenty_symbols_1h")
        for r in [result[name]]
    }
    if args.store:
        result["store"] = store_part(year, args.window, args.k)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
