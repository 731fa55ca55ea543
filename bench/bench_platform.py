"""Platform API benchmark: the trading services' requests through /api/v1 beside the bare store calls.

Prints JSON. Starts its own SecantusDB and a SQLite metadata store, serves the API on
loopback (uvicorn in a thread), and measures, each beside its anchor in the same run:

* a 1,500-record extractor klines batch through ``POST /api/v1/data/insert`` vs the same
  documents written by ``MongoStore.insert_idempotent`` (fresh symbols for each);
* the same batch again (all duplicates, the extractor's overlap) vs the direct re-insert;
* the extractor's latest-kline query (``sort={"close_time": -1}&limit=1``) vs ``MongoStore.latest``
  (both gallop back from the wall clock; the klines end at the current quarter hour);
* the trade engine's open-position upsert (``PUT``) vs ``PlatformTables.update`` directly.

    .venv/bin/python bench/bench_platform.py --rounds 5
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

import httpx
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.app import create_app
from api.contract import klines
from api.contract.datasets import resolve
from api.contract.filters import iso_z
from api.deps import ApiSettings
from api.testing import serve
from dm_resources.embedded import free_port, start_secantus
from dm_resources.metadata.platform import Cond, PlatformTables
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings

M15 = 15 * 60_000
TOKEN = "bench-token-0123456789"


def records(symbol: str, start: int, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        t = start + i * M15
        p = 27000 + i % 100
        out.append(
            {
                "symbol": symbol,
                "interval": "15m",
                "open_time": iso_z(t),
                "close_time": iso_z(t + M15 - 1),
                "timestamp": iso_z(t),
                "open_price": f"{p}.10",
                "high_price": f"{p + 5}.25",
                "low_price": f"{p - 4}.75",
                "close_price": f"{p + 1}.5",
                "volume": "12.345",
                "quote_asset_volume": "333333.25",
                "taker_buy_base_asset_volume": "6.5",
                "taker_buy_quote_asset_volume": "175000.5",
                "price_change": "1.4",
                "price_change_percent": "0.0052",
                "number_of_trades": 100 + i % 50,
                "source": "binance",
                "extractor_version": "1.0",
                "extracted_at": iso_z(start),
            }
        )
    return out


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(ours: list[float], anchor: list[float]) -> dict[str, Any]:
    o, a = statistics.median(ours), statistics.median(anchor)
    return {"ours_median_s": round(o, 5), "anchor_median_s": round(a, 5), "ratio": round(o / a, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1500)
    ap.add_argument("--queries", type=int, default=50)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_platform_"))
    port = free_port()
    proc = start_secantus(port, tmp / "mongo")
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    store = MongoStore(url, f"bench_{uuid.uuid4().hex[:8]}")
    store.ensure_indexes()
    meta = MetadataStore(f"sqlite:///{tmp / 'meta.db'}")
    meta.migrate()
    settings = load_settings(
        mongo_url=url,
        mongo_db=store.db_name,
        metadata_url=str(meta.url),
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
    )
    app = create_app(
        settings,
        mongo=store,
        meta=meta,
        api_settings=ApiSettings(tokens=SecretStr(json.dumps({TOKEN: ["*"]}))),
    )
    ds = resolve("klines_15m")
    # Klines ending at the current quarter hour, as an extractor's are.
    now = int(time.time() * 1000)
    start = now - now % M15 - args.batch * M15
    out: dict[str, Any] = {"batch": args.batch, "rounds": args.rounds}
    try:
        with serve(app) as base, httpx.Client(base_url=base, timeout=120) as http:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            new_api, new_direct, dup_api, dup_direct = [], [], [], []
            for r in range(args.rounds):
                recs = records(f"APIX{r}USDT", start, args.batch)
                body = {"database": "mongodb", "collection": "klines_15m", "records": recs}

                def post(body: dict[str, Any] = body) -> None:
                    http.post("/api/v1/data/insert", json=body, headers=auth).raise_for_status()

                new_api.append(timed(post))
                dup_api.append(timed(post))
                # The anchor: the same work minus HTTP, validation and mapping.
                docs = [klines.to_document(ds, x) for x in records(f"DIRX{r}USDT", start, args.batch)]
                new_direct.append(timed(lambda docs=docs: store.insert_idempotent("klines", docs)))
                dup_direct.append(timed(lambda docs=docs: store.insert_idempotent("klines", docs)))
            out["insert_1500_new"] = summary(new_api, new_direct)
            out["insert_1500_all_duplicates"] = summary(dup_api, dup_direct)

            sym = "APIX0USDT"
            last = start + (args.batch - 1) * M15
            params = {"filter": json.dumps({"symbol": sym}), "sort": json.dumps({"close_time": -1}), "limit": 1}
            q_api, q_direct = [], []
            for _ in range(args.queries):
                q_api.append(timed(lambda: http.get("/api/v1/mongodb/klines_15m", params=params).raise_for_status()))
                q_direct.append(timed(lambda: store.latest("klines", sym, 1, extra={"interval": "15m"})))
            assert http.get("/api/v1/mongodb/klines_15m", params=params).json()["data"][0]["close_time"] == iso_z(
                last + M15 - 1
            )
            out["latest_kline_query"] = summary(q_api, q_direct)

            flt = {"symbol": "BTCUSDT", "position_side": "LONG", "status": "open"}
            tables = PlatformTables(meta)
            conds = [Cond(k, "eq", v) for k, v in flt.items()]
            u_api, u_direct = [], []
            for i in range(args.queries):
                data = {"unrealized_pnl": str(i), "updated_at": iso_z(start + i * 1000)}
                u_api.append(
                    timed(
                        lambda data=data: http.put(
                            "/api/v1/mysql/positions", json={"filter": flt, "data": data, "upsert": True}, headers=auth
                        ).raise_for_status()
                    )
                )
                u_direct.append(
                    timed(lambda i=i: tables.update("positions", conds, {"unrealized_pnl": str(i + 0.5)}, upsert=True))
                )
            out["position_upsert"] = summary(u_api, u_direct)
    finally:
        store.client.drop_database(store.db_name)
        store.close()
        meta.close()
        proc.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
