"""Backfill of N days × symbols launched through Dagster (GraphQL), against the fake exchange.

Prints JSON: wall time from launch to the last run finishing, number of runs, REST
requests and weight spent, and the floor that Binance's weight limit imposes
(total request weight ÷ 2400 weight per minute), so the two can be compared.

Everything is real but the exchange: SecantusDB, SQLite metadata, ``dagster dev``
(webserver + daemon, SQLite instance) and the backfill daemon launching runs.

    .venv/bin/python bench/bench_backfill.py --days 30 --symbols BTCUSDT,ETHUSDT,SOLUSDT
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dm_resources.candle_store import CandleStore  # noqa: E402
from dm_resources.dagster_client import DagsterGraphQL  # noqa: E402
from dm_resources.embedded import free_port, start_dagster_dev, start_secantus  # noqa: E402
from dm_resources.mongo import MongoStore  # noqa: E402
from tests.fake_exchange import FakeExchange  # noqa: E402

ASSETS = [["candles", f"candles_{iv}"] for iv in ("1m", "5m", "15m", "1h", "4h", "1d")] + [
    ["quality", "audit_results"],
    ["quality", "health_scores"],
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT")
    ap.add_argument("--end", default=None, help="last day (ISO); default: yesterday")
    ap.add_argument("--max-concurrent-runs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--per-run", type=int, default=10, help="partitions per run (0 = single run)")
    args = ap.parse_args()
    symbols = args.symbols.split(",")
    last = dt.date.fromisoformat(args.end) if args.end else dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    days = [(last - dt.timedelta(days=i)).isoformat() for i in range(args.days)][::-1]
    partitions = [f"{d}|{s}" for d in days for s in symbols]

    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    mongo_port, dagster_port = free_port(), free_port()
    mongo = start_secantus(mongo_port, work / "mongo")
    exchange = FakeExchange(symbols=symbols).start()
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"
        f"  config:\n    max_concurrent_runs: {args.max_concurrent_runs}\ntelemetry:\n  enabled: false\n"
    )
    mongo_url = f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"
    env = {
        "DM_MONGO_URL": mongo_url,
        "DM_MONGO_DB": "bench",
        "DM_METADATA_URL": f"sqlite:///{work / 'meta.db'}",
        "DM_BINANCE_REST_URL": exchange.url,
        "DM_SYMBOLS": ",".join(symbols),
        "DM_PARTITION_START": days[0],
        "DM_AUTOMATION": "false",
        "DM_BACKFILL_PARTITIONS_PER_RUN": str(args.per_run),
    }
    dagster = None
    try:
        dagster = start_dagster_dev(dagster_port, str(home), env, log_dir=work)
        from dagster import DagsterInstance

        with DagsterInstance.from_config(str(home)) as inst:
            inst.add_dynamic_partitions("symbols", symbols)
        gql = DagsterGraphQL(f"http://127.0.0.1:{dagster_port}/graphql")
        t0 = time.perf_counter()
        backfill_id = gql.launch_backfill(ASSETS, partitions, tags={"dm/origin": "api"}, title="bench")
        state = gql.wait_for_backfill(backfill_id, timeout=args.timeout, poll=2.0)
        wall = time.perf_counter() - t0
        rest = exchange.requests_to("/fapi/v1/klines")
        weight = sum(
            10
            if int(p.get("limit", 500)) > 1000
            else 5
            if int(p.get("limit", 500)) >= 500
            else 2
            if int(p.get("limit", 500)) >= 100
            else 1
            for p in rest
        )
        store = MongoStore(mongo_url, "bench")
        from dm_assets.partitions import day_bounds_ms

        lo, hi = day_bounds_ms(days[0])[0], day_bounds_ms(days[-1])[1]
        candles_1m = sum(CandleStore(store).count(s, "1m", lo, hi) for s in symbols)
        store.close()
        floor_s = weight / 2400 * 60
        print(
            json.dumps(
                {
                    "partitions": len(partitions),
                    "days": args.days,
                    "symbols": symbols,
                    "backfill_status": state.status,
                    "runs": len(state.runs),
                    "runs_succeeded": sum(r["status"] == "SUCCESS" for r in state.runs),
                    "max_concurrent_runs": args.max_concurrent_runs,
                    "partitions_per_run": args.per_run or "all",
                    "wall_s": round(wall, 1),
                    "rest_requests": len(rest),
                    "rest_weight": weight,
                    "weight_floor_s": round(floor_s, 1),
                    "wall_over_floor": round(wall / floor_s, 2) if floor_s else None,
                    "candles_1m_stored": candles_1m,
                    "candles_1m_expected": len(partitions) * 1440,
                    "s_per_partition": round(wall / len(partitions), 2),
                },
                indent=2,
            )
        )
    finally:
        if dagster is not None:
            dagster.stop(signal.SIGINT, timeout=30)
        exchange.stop()
        mongo.stop()


if __name__ == "__main__":
    main()
