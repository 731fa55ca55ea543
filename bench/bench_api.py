"""API read benchmark over day-bucketed candles, every figure beside an anchor measured in the same run.

* **Hot reads**: ``/data/candles?limit=1000`` (cached) at concurrency 16 beside a bytes-only FastAPI
  route (``bench/bytes_app.py``) serving the very same body from memory, in its own uvicorn
  process like ours; prints rps and p99 for both and the ratios (target ≥ 0.8× rps, ≤ 1.5× p99).
  Also the uncached route beside the direct store read of the same 1,000 candles.
* **Bulk reads**: ``--years`` of 1m candles for one pair through the API as NDJSON, Arrow IPC and
  CSV, beside the direct pymongo read of the same bucket documents (raw batches, decoded to numpy
  columns) — the store's own floor.

Starts its own SecantusDB (or uses --mongo-url), writes the candles as day buckets through
``CandleStore``, runs ``uvicorn api.app:app`` twice (cached, ``DM_API_CACHE_ENABLED=false``) and
the bytes app once. Prints JSON.

    .venv/bin/python bench/bench_api.py                # one year (525,600 candles, 365 buckets)
    .venv/bin/python bench/bench_api.py --years 10     # ten years (5,256,000 candles)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bson
import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.candle_reads import iter_arrow, iter_ndjson
from dm_resources.candle_store import BUCKETS, CandleStore, decode_bucket
from dm_resources.embedded import ManagedProcess, _http_ok, free_port, start_api, start_secantus, wait_until
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore

MIN = 60_000
DAY = 86_400_000
YEAR_ROWS = 525_600
SYMBOL = "BTCUSDT"
CANDLE_FIELDS = (
    "open_time",
    "close_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "trades",
    "source",
)


def day_frame(day_start: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """One day of plausible 1m candles (a random walk), as the candle assets would hand them over."""
    ot = day_start + np.arange(n, dtype=np.int64) * MIN
    close = 27_000.0 * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0, 3.0, n))
    vol = rng.gamma(2.0, 5.0, n)
    return pd.DataFrame(
        {
            "open_time": ot,
            "open": open_.round(1),
            "high": (np.maximum(open_, close) + spread).round(1),
            "low": (np.minimum(open_, close) - spread).round(1),
            "close": close.round(1),
            "volume": vol.round(3),
            "quote_volume": (vol * close).round(2),
            "taker_buy_volume": (vol / 2).round(3),
            "taker_buy_quote_volume": (vol * close / 2).round(2),
            "trades": rng.integers(50, 500, n),
            "source": "kline",
        }
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def summary(lat_s: list[float], wall: float) -> dict[str, float]:
    ms = [x * 1000 for x in lat_s]
    return {
        "requests": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "requests_per_s": round(len(ms) / wall, 1),
    }


async def load(url: str, params: dict[str, Any], concurrency: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for _ in range(concurrency):  # warm connections (and the cache, when on)
            (await client.get(url, params=params)).raise_for_status()
        todo = iter(range(total))

        async def worker() -> None:
            for _ in todo:
                t0 = time.perf_counter()
                r = await client.get(url, params=params)
                r.raise_for_status()
                _ = r.content
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return summary(latencies, wall)


def direct(fn: Callable[[], Any], concurrency: int, total: int) -> dict[str, float]:
    def one(_: int) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for _ in range(3):
        fn()
    started = time.perf_counter()
    if concurrency == 1:
        lat = [one(i) for i in range(total)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            lat = list(pool.map(one, range(total)))
    return summary(lat, time.perf_counter() - started)


def sequential(url: str, params: dict[str, Any], total: int) -> dict[str, float]:
    lat = []
    with httpx.Client(timeout=60) as client:
        for _ in range(3):
            client.get(url, params=params).raise_for_status()
        started = time.perf_counter()
        for _ in range(total):
            t0 = time.perf_counter()
            client.get(url, params=params).raise_for_status()
            lat.append(time.perf_counter() - t0)
    return summary(lat, time.perf_counter() - started)


def stream(base: str, fmt: str, start: int, end: int) -> dict[str, Any]:
    params = {"pair": SYMBOL, "period": "1m", "start": start, "end": end, "format": fmt}
    t0 = time.perf_counter()
    size = 0
    first_byte = None
    with httpx.Client(timeout=600) as client, client.stream("GET", f"{base}/data/candles", params=params) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            if first_byte is None:
                first_byte = time.perf_counter() - t0
            size += len(chunk)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 3), "mb": round(size / 1e6, 1), "first_byte_s": round(first_byte or 0, 3)}


def direct_buckets(store: MongoStore, start: int, end: int) -> dict[str, Any]:
    """The store's floor: raw BSON batches of the same bucket documents, decoded to numpy columns."""
    coll = store.db[BUCKETS]
    flt = {"symbol": SYMBOL, "interval": "1m", "start": {"$gte": start - start % DAY, "$lt": end}}
    t0 = time.perf_counter()
    raw = list(coll.find_raw_batches(flt, batch_size=16))
    t_fetch = time.perf_counter() - t0
    rows = 0
    for batch in raw:
        for doc in bson.decode_all(batch):
            rows += decode_bucket(doc).n
    wall = time.perf_counter() - t0
    return {
        "rows": rows,
        "wall_s": round(wall, 3),
        "fetch_s": round(t_fetch, 3),
        "mb": round(sum(map(len, raw)) / 1e6, 1),
    }


def render_only(store: MongoStore, start: int, end: int) -> dict[str, Any]:
    """The API's encoders without HTTP: where a bulk read's time goes besides the store."""
    cs = CandleStore(store)
    out = {}
    for name, fn in (("ndjson", iter_ndjson), ("arrow", iter_arrow)):
        t0 = time.perf_counter()
        size = sum(len(c) for c in fn(cs, SYMBOL, "1m", CANDLE_FIELDS, start, end))
        out[name] = {"wall_s": round(time.perf_counter() - t0, 3), "mb": round(size / 1e6, 1)}
    return out


def start_bytes_app(port: int, body_file: Path, log_dir: Path) -> ManagedProcess:
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).parent), "bytes_app:app"]
    proc = ManagedProcess(
        "bytes_app",
        [*cmd, "--host", "127.0.0.1", "--port", str(port)],
        log_dir / "bytes_app.log",
        env={**os.environ, "DM_BENCH_BODY_FILE": str(body_file)},
    ).start()
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/health/liveness"), 60, f"bytes app on :{port}", proc)
    return proc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=float, default=1.0, help="years of 1m candles to load (1 year = 525,600)")
    ap.add_argument("--requests", type=int, default=1600, help="requests per load phase")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--mongo-url", default=None, help="use this server instead of starting SecantusDB")
    ap.add_argument("--skip-hot", action="store_true", help="bulk reads only")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_api_"))
    procs: list[ManagedProcess] = []
    rows_total = int(args.years * YEAR_ROWS)
    result: dict[str, Any] = {"years": args.years, "rows": rows_total, "concurrency": args.concurrency}
    try:
        if args.mongo_url:
            mongo_url = args.mongo_url
        else:
            port = free_port()
            procs.append(start_secantus(port, tmp / "mongo", cache_size="4G"))
            mongo_url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        db = f"bench_api_{uuid.uuid4().hex[:8]}"
        store = MongoStore(mongo_url, db)
        store.ensure_indexes()
        cs = CandleStore(store)
        now = int(time.time() * 1000)
        end = now - now % MIN
        start = end - rows_total * MIN
        rng = np.random.default_rng(7)
        t0 = time.perf_counter()
        day = start - start % DAY
        while day < end:
            lo, hi = max(day, start), min(day + DAY, end)
            frame = day_frame(lo, (hi - lo) // MIN, rng)
            cs.sync_range(SYMBOL, "1m", lo, hi, frame)
            day += DAY
        result["load_s"] = round(time.perf_counter() - t0, 1)
        result["load_buckets"] = store.db[BUCKETS].estimated_document_count()
        meta_url = f"sqlite:///{tmp / 'metadata.db'}"
        MetadataStore(meta_url).migrate()
        env = {
            "DM_MONGO_URL": mongo_url,
            "DM_MONGO_DB": db,
            "DM_METADATA_URL": meta_url,
            "DM_SYMBOLS": SYMBOL,
            "DM_DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{free_port()}/graphql",
        }
        c = f"concurrency_{args.concurrency}"

        # -- bulk reads ----------------------------------------------------------------------------
        api_port = free_port()
        api = start_api(api_port, {**env, "DM_API_CACHE_ENABLED": "false"}, log_dir=tmp / "uncached")
        procs.append(api)
        base = f"http://127.0.0.1:{api_port}"
        bulk: dict[str, Any] = {"direct_pymongo_buckets": direct_buckets(store, start, end)}
        for fmt in ("ndjson", "arrow", "csv"):
            bulk[f"api_{fmt}"] = stream(base, fmt, start, end)
        bulk["render_only_no_http"] = render_only(store, start, end)
        floor = bulk["direct_pymongo_buckets"]["wall_s"]
        for fmt in ("ndjson", "arrow", "csv"):
            bulk[f"api_{fmt}"]["vs_direct_read"] = round(bulk[f"api_{fmt}"]["wall_s"] / floor, 2)
        bulk["ndjson_over_arrow"] = round(bulk["api_ndjson"]["wall_s"] / bulk["api_arrow"]["wall_s"], 2)
        result["bulk"] = bulk

        if not args.skip_hot:
            params = {"pair": SYMBOL, "period": "1m", "limit": 1000}
            url = f"{base}/data/candles"

            def direct_query() -> list[dict[str, Any]]:
                rows = cs.latest(SYMBOL, "1m", 1000, projection=CANDLE_FIELDS)
                assert len(rows) == 1000
                return rows

            result["uncached"] = {
                "direct_store_latest_1000": direct(direct_query, args.concurrency, args.requests // 4),
                "api": asyncio.run(load(url, params, args.concurrency, args.requests // 4)),
            }
            api.stop()
            procs.remove(api)

            # -- hot reads: our cached route beside a bytes-only FastAPI route, same body --------------
            api_port = free_port()
            api = start_api(api_port, env, log_dir=tmp / "cached")
            procs.append(api)
            url = f"http://127.0.0.1:{api_port}/data/candles"
            body = httpx.get(url, params=params, timeout=60).content
            assert json.loads(body)["rows"][-1]["open_time"] == end - MIN
            body_file = tmp / "body.json"
            body_file.write_bytes(body)
            bport = free_port()
            bytes_app = start_bytes_app(bport, body_file, tmp / "bytes")
            procs.append(bytes_app)
            burl = f"http://127.0.0.1:{bport}/bytes"
            assert httpx.get(burl, timeout=60).content == body
            hot: dict[str, Any] = {"body_kb": round(len(body) / 1024, 1)}
            # interleaved rounds, so a background hiccup on the shared machine hits both alike
            rounds: dict[str, list[dict[str, float]]] = {"bytes_only": [], "cached": []}
            for _ in range(2):
                rounds["bytes_only"].append(asyncio.run(load(burl, {}, args.concurrency, args.requests // 2)))
                rounds["cached"].append(asyncio.run(load(url, params, args.concurrency, args.requests // 2)))
            for k, rs in rounds.items():
                hot[k] = max(rs, key=lambda r: r["requests_per_s"])
                hot[k]["rounds_rps"] = [r["requests_per_s"] for r in rs]
            hot["rps_ratio"] = round(hot["cached"]["requests_per_s"] / hot["bytes_only"]["requests_per_s"], 2)
            hot["p99_ratio"] = round(hot["cached"]["p99_ms"] / hot["bytes_only"]["p99_ms"], 2)
            hot["sequential"] = {"bytes_only": sequential(burl, {}, 300), "cached": sequential(url, params, 300)}
            result["hot_" + c] = hot
            result["targets"] = {
                "cached_rps_at_least_0.8x_bytes_only": hot["rps_ratio"] >= 0.8,
                "cached_p99_at_most_1.5x_bytes_only": hot["p99_ratio"] <= 1.5,
            }
        result.setdefault("targets", {})
        per_year = bulk["api_ndjson"]["wall_s"] / args.years
        result["targets"]["ndjson_one_year_at_most_5s"] = per_year <= 5.0
        result["targets"]["arrow_ten_years_under_2s_extrapolated_s"] = round(
            bulk["api_arrow"]["wall_s"] * 10 / args.years, 2
        )
        store.client.drop_database(db)
        store.close()
    finally:
        for p in reversed(procs):
            p.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
