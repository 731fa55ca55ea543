"""API read benchmark: ``/data/candles?limit=1000`` at concurrency 16, cached and uncached, beside the
direct store query for the same rows; and one year of 1m candles for one pair read through the API.

Prints JSON. Starts its own SecantusDB (or uses --mongo-url), writes ``--rows`` 1m candles for
one pair ending at the current minute, then runs two API processes (``uvicorn api.app:app``):
one with the hot cache, one with ``DM_API_CACHE_ENABLED=false``. The load generator is
asyncio + httpx in this process; the direct query is ``find`` + ``sort`` on the same index
for the same 1,000 rows, sequential and at the same concurrency (threads).

    .venv/bin/python bench/bench_api.py                 # 525,600 rows (one year); ~2 min to load
    .venv/bin/python bench/bench_api.py --rows 50000    # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.queries import LatestHints, Source, iter_ndjson, read_latest
from dm_resources.embedded import free_port, start_api, start_secantus
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore

MIN = 60_000
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


def candles(start: int, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        t = start + i * MIN
        p = 27000.0 + (i % 1000) * 0.1
        out.append(
            {
                "_id": f"{SYMBOL}:1m:{t}",
                "symbol": SYMBOL,
                "interval": "1m",
                "open_time": t,
                "close_time": t + MIN - 1,
                "open": p,
                "high": p + 5.5,
                "low": p - 4.25,
                "close": p + 1.0,
                "volume": 12.345 + i % 7,
                "quote_volume": 333333.25,
                "taker_buy_volume": 6.5,
                "taker_buy_quote_volume": 175000.5,
                "trades": 100 + i % 50,
                "source": "kline",
            }
        )
    return out


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


def full_read(base: str, start: int, end: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    params = {"pair": SYMBOL, "period": "1m", "start": start, "end": end, "format": "ndjson"}
    t0 = time.perf_counter()
    rows = 0
    with httpx.Client(timeout=300) as client, client.stream("GET", f"{base}/data/candles", params=params) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            rows += chunk.count(b"\n")
    wall = time.perf_counter() - t0
    out["ndjson_stream"] = {"rows": rows, "wall_s": round(wall, 3), "rows_per_s": round(rows / wall)}

    t0 = time.perf_counter()
    rows = pages = 0
    url: str | None = f"{base}/data/candles"
    q: dict[str, Any] | None = {"pair": SYMBOL, "period": "1m", "start": start, "end": end, "limit": 5000}
    with httpx.Client(timeout=300) as client:
        while url:
            body = client.get(url, params=q).json()
            rows += body["count"]
            pages += 1
            url, q = body["next"], None
    wall = time.perf_counter() - t0
    out["json_pages_limit_5000"] = {
        "rows": rows,
        "pages": pages,
        "wall_s": round(wall, 3),
        "rows_per_s": round(rows / wall),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=525_600, help="1m candles to load (one year = 525,600)")
    ap.add_argument("--requests", type=int, default=800, help="requests per load phase")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--mongo-url", default=None, help="use this server instead of starting SecantusDB")
    ap.add_argument("--db", default=None, help="reuse this database's candles (from an earlier run) if present")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_api_"))
    procs = []
    result: dict[str, Any] = {"rows": args.rows, "concurrency": args.concurrency, "limit": 1000}
    try:
        if args.mongo_url:
            mongo_url = args.mongo_url
        else:
            port = free_port()
            procs.append(start_secantus(port, tmp / "mongo"))
            mongo_url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        db = args.db or f"bench_api_{uuid.uuid4().hex[:8]}"
        store = MongoStore(mongo_url, db)
        store.ensure_indexes()
        src = Source("candles", SYMBOL, (("interval", "1m"),), CANDLE_FIELDS)
        newest = read_latest(store, src, 1, end=None, step_ms=MIN, hints=LatestHints()) if args.db else []
        if newest:
            end = int(newest[-1]["open_time"]) + MIN
            start = end - args.rows * MIN
            result["load_s"] = "reused"
        else:
            now = int(time.time() * 1000)
            end = now - now % MIN
            start = end - args.rows * MIN
            t0 = time.perf_counter()
            for i in range(0, args.rows, 20_000):
                store.insert_idempotent("candles", candles(start + i * MIN, min(20_000, args.rows - i)))
            result["load_s"] = round(time.perf_counter() - t0, 1)
        meta_url = f"sqlite:///{tmp / 'metadata.db'}"
        MetadataStore(meta_url).migrate()

        # The direct query: the same 1,000 rows, same index, same projection, decoded by pymongo.
        lo = end - 1000 * MIN
        proj = {f: 1 for f in CANDLE_FIELDS} | {"_id": 0}

        def direct_query() -> list[dict[str, Any]]:
            # Same filter, projection and index order as the API's read (Source.find: hint on
            # SecantusDB, sort on MongoDB), decoded by pymongo into dicts.
            rows = list(
                src.find(
                    store,
                    {"symbol": SYMBOL, "interval": "1m", "open_time": {"$gte": lo, "$lt": end}},
                    proj,
                    batch_size=1001,
                )
            )
            assert len(rows) == 1000
            return rows

        result["direct_store_query"] = {
            "sequential": direct(direct_query, 1, min(args.requests, 300)),
            f"concurrency_{args.concurrency}": direct(direct_query, args.concurrency, args.requests),
        }

        env = {
            "DM_MONGO_URL": mongo_url,
            "DM_MONGO_DB": db,
            "DM_METADATA_URL": meta_url,
            "DM_SYMBOLS": SYMBOL,
            "DM_DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{free_port()}/graphql",
        }
        params = {"pair": SYMBOL, "period": "1m", "limit": 1000}
        for label, extra in (("cached", {}), ("uncached", {"DM_API_CACHE_ENABLED": "false"})):
            api_port = free_port()
            api = start_api(api_port, {**env, **extra}, log_dir=tmp / label)
            procs.append(api)
            url = f"http://127.0.0.1:{api_port}/data/candles"
            body = httpx.get(url, params=params, timeout=60).json()
            assert body["count"] == 1000 and body["rows"][-1]["open_time"] == end - MIN, body["rows"][-1]
            result[f"api_{label}"] = {
                "sequential": sequential(url, params, min(args.requests, 300)),
                f"concurrency_{args.concurrency}": asyncio.run(load(url, params, args.concurrency, args.requests)),
            }
            if label == "uncached":
                result["full_range_through_api"] = full_read(f"http://127.0.0.1:{api_port}", start, end)
            api.stop()
            procs.remove(api)

        # Where the full-range time goes: the store alone, with the API's own stream encoder.
        t0 = time.perf_counter()
        n = sum(chunk.count(b"\n") for chunk in iter_ndjson(store, src, start, end))
        wall = time.perf_counter() - t0
        result["full_range_direct_raw_batches_to_ndjson"] = {
            "rows": n,
            "wall_s": round(wall, 3),
            "rows_per_s": round(n / wall),
        }
        t0 = time.perf_counter()
        n = sum(
            1
            for _ in src.find(
                store,
                {"symbol": SYMBOL, "interval": "1m", "open_time": {"$gte": start, "$lt": end}},
                proj,
                batch_size=10_000,
            )
        )
        wall = time.perf_counter() - t0
        result["full_range_direct_pymongo_find"] = {"rows": n, "wall_s": round(wall, 3), "rows_per_s": round(n / wall)}

        c = f"concurrency_{args.concurrency}"
        d_seq, d_c = result["direct_store_query"]["sequential"], result["direct_store_query"][c]
        result["targets"] = {
            "cached_p99_ms_under_25": result["api_cached"][c]["p99_ms"] < 25,
            "uncached_vs_direct_p50_sequential": round(
                result["api_uncached"]["sequential"]["p50_ms"] / d_seq["p50_ms"], 2
            ),
            f"uncached_vs_direct_p50_{c}": round(result["api_uncached"][c]["p50_ms"] / d_c["p50_ms"], 2),
            f"uncached_vs_direct_p99_{c}": round(result["api_uncached"][c]["p99_ms"] / d_c["p99_ms"], 2),
            "full_year_stream_under_5s": result["full_range_through_api"]["ndjson_stream"]["wall_s"] < 5.0,
        }
        if not args.db:
            store.client.drop_database(db)
        store.close()
    finally:
        for p in reversed(procs):
            p.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
