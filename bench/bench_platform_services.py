"""The trade engine's typed routes beside the direct metadata-store call, in one run. Prints JSON.

* ``GET /api/v1/trading/positions?status=open&limit=500&cursor=…`` (the second page of the
  engine's walk over its open positions) vs ``PlatformTables.query`` of the same 500 rows;
* ``PUT /api/v1/trading/daily-pnl/{date}`` vs ``PlatformTables.update(…, upsert=True)``;
* ``GET /health/liveness`` with the same headers: what any request costs here (the floor).

The route figures include everything a request costs here: HTTP on loopback, service-token
auth, validation, rendering, the write audit row after each write. SQLite by default; pass
``--metadata-url mysql+pymysql://root@127.0.0.1:3306/bench`` (an empty database) for MariaDB.

    .venv/bin/python bench/bench_platform_services.py --positions 1500 --rounds 30
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.app import create_app
from api.testing import serve
from dm_resources.embedded import free_port
from dm_resources.metadata.platform import Cond, PlatformTables, public_columns
from dm_resources.metadata.store import MetadataStore
from dm_resources.settings import load_settings

ENGINE = "petrosa-tradeengine"
TOKEN = "bench-engine-token-0123456789"


def timed(fn: Callable[[], Any], rounds: int) -> dict[str, float]:
    fn()  # warm up
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


def seed(meta: MetadataStore, n: int) -> None:
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "position_id": f"bench-{i}",
            "strategy_id": "bench",
            "symbol": f"B{i}USDT",
            "position_side": "LONG",
            "status": "open",
            "entry_price": Decimal("27123.5"),
            "quantity": Decimal("0.015"),
            "entry_time": now,
            "metadata": {"i": i},
        }
        for i in range(n)
    ]
    out = PlatformTables(meta).insert("positions", rows)
    assert out.inserted == n, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--positions", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--metadata-url", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-services-"))
    url = args.metadata_url or f"sqlite:///{tmp / 'metadata.db'}"
    meta = MetadataStore(url)
    meta.migrate()
    seed(meta, args.positions)
    settings = load_settings(
        metadata_url=url,
        dagster_graphql_url=f"http://127.0.0.1:{free_port()}/graphql",
        service_tokens=json.dumps({ENGINE: TOKEN}),
    )
    headers = {"X-Petrosa-Service": ENGINE, "Authorization": f"Bearer {TOKEN}"}
    tables = PlatformTables(meta)
    with serve(create_app(settings, meta=meta)) as base, httpx.Client(base_url=base, headers=headers) as c:
        first = c.get("/api/v1/trading/positions", params={"status": "open", "limit": 500}).json()
        cursor = first["next_cursor"]
        assert cursor

        def route_page() -> None:
            page = c.get("/api/v1/trading/positions", params={"status": "open", "limit": 500, "cursor": cursor})
            assert page.status_code == 200 and len(page.json()["data"]) == 500

        after_id = 500  # the first page ends at insertion 500 (ids start at 1 in a fresh database)
        names = ["id", *public_columns("positions")]

        def store_page() -> None:
            rows, _ = tables.query(
                "positions",
                [Cond("status", "eq", "open"), Cond("id", "gt", after_id)],
                sort=[("id", 1)],
                limit=500,
                fields=names,
            )
            assert len(rows) == 500

        day = iter(range(10**6))

        def route_put() -> None:
            d = (dt.date(2030, 1, 1) + dt.timedelta(days=next(day) % 3000)).isoformat()
            assert c.put(f"/api/v1/trading/daily-pnl/{d}", json={"daily_pnl": -12.5}).status_code == 200

        def store_put() -> None:
            d = dt.date(2040, 1, 1) + dt.timedelta(days=next(day) % 3000)
            now = dt.datetime.now(dt.UTC)
            tables.update(
                "daily_pnl", [Cond("date", "eq", d)], {"daily_pnl": Decimal("-12.5"), "updated_at": now}, upsert=True
            )

        def floor() -> None:
            assert c.get("/health/liveness").status_code == 200

        http_floor = timed(floor, args.rounds * 3)
        page_route, page_store = timed(route_page, args.rounds), timed(store_page, args.rounds)
        put_route, put_store = timed(route_put, args.rounds * 3), timed(store_put, args.rounds * 3)
    meta.close()
    out = {
        "backend": meta.backend,
        "positions": args.positions,
        "rounds": args.rounds,
        "http_floor_liveness": http_floor,
        "positions_page_500_with_cursor": {
            "route": page_route,
            "store": page_store,
            "ratio_p50": round(page_route["p50_ms"] / page_store["p50_ms"], 2),
        },
        "daily_pnl_put": {
            "route": put_route,
            "store": put_store,
            "ratio_p50": round(put_route["p50_ms"] / put_store["p50_ms"], 2),
        },
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
