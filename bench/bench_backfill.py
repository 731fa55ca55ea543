"""Backfill of N days × symbols launched through Dagster (GraphQL), against the fake exchange.

Prints JSON: wall time from launch to the last run finishing, number of runs, REST
requests and weight spent, and the floor that Binance's weight limit imposes
(total request weight ÷ 2400 weight per minute), so the two can be compared.

Everything is real but the exchange: SecantusDB, SQLite metadata, ``dagster dev``
(webserver + daemon, SQLite instance) and the backfill daemon launching runs.

    .venv/bin/python bench/bench_backfill.py --days 30 --symbols BTCUSDT,ETHUSDT,SOLUSDT
    .venv/bin/python bench/bench_backfill.py --profile     # where one partition's seconds go

``--profile`` materializes one date × symbol partition (all candle intervals + audit + health, as a
backfill run does) in-process with Dagster, twice (a cold day filled from REST, then the re-run),
with timers around the REST client, the store reads and writes, the metadata store and Dagster's
event handling, plus Dagster's own step timings; the rest is compute and step framework. It also
times what a daemon-launched run pays before its first step: a fresh process importing the code
location.
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


def _weight(limit: int) -> int:
    """Binance kline request weight by limit (1/2/5/10 for <100/<500/≤1000/>1000)."""
    return 10 if limit > 1000 else 5 if limit >= 500 else 2 if limit >= 100 else 1


class Timers:
    """Wall time per category; nested timed calls count only in the outermost (no double counting)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._depth = 0

    def wrap(self, cls: type, names: list[str], category: str) -> None:
        for name in names:
            original = getattr(cls, name)

            def timed(*a: object, __orig=original, **kw: object) -> object:  # type: ignore[no-untyped-def]
                if self._depth:
                    return __orig(*a, **kw)
                self._depth += 1
                t0 = time.perf_counter()
                try:
                    return __orig(*a, **kw)
                finally:
                    self._depth -= 1
                    self.seconds[category] = self.seconds.get(category, 0.0) + time.perf_counter() - t0
                    self.calls[category] = self.calls.get(category, 0) + 1

            setattr(cls, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def profile_partition(args: argparse.Namespace) -> None:
    import subprocess

    from dagster import DagsterInstance, materialize

    from dm_assets.candles.assets import CANDLE_ASSETS
    from dm_assets.partitions import SYMBOLS_PARTITIONS_NAME, partition_key
    from dm_assets.quality.assets import QUALITY_ASSETS
    from dm_resources.binance import BinanceClient
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.resources import ResourceSet
    from dm_resources.settings import load_settings

    symbol = args.symbols.split(",")[0]
    last = dt.date.fromisoformat(args.end) if args.end else dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-profile-"))
    mongo_port = free_port()
    mongo = start_secantus(mongo_port, work / "mongo")
    exchange = FakeExchange(symbols=[symbol]).start()
    out: dict[str, object] = {"symbol": symbol}
    try:
        mongo_url = f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"
        meta_url = f"sqlite:///{work / 'meta.db'}"
        MetadataStore(meta_url).migrate()
        settings = load_settings(
            mongo_url=mongo_url, mongo_db="bench", metadata_url=meta_url, binance_rest_url=exchange.url
        )
        MongoStore(mongo_url, "bench").ensure_indexes()
        timers = Timers()
        timers.wrap(BinanceClient, ["fetch_klines", "server_time", "exchange_symbols"], "rest_wait")
        reads = ["read_range", "count", "latest", "first_time", "symbols"]
        timers.wrap(MongoStore, reads, "store_reads")
        timers.wrap(MongoStore, ["insert_idempotent", "upsert", "sync_range"], "store_writes")
        cs_reads = ["read_range", "read_frame", "count", "first_time", "last_time", "latest", "has"]
        timers.wrap(CandleStore, cs_reads, "store_reads")
        timers.wrap(CandleStore, ["sync_range", "write_day"], "store_writes")
        meta_public = [
            n
            for n in vars(MetadataStore)
            if not n.startswith("_") and callable(getattr(MetadataStore, n)) and n not in ("engine", "backend")
        ]
        timers.wrap(MetadataStore, meta_public, "metadata_db")
        timers.wrap(DagsterInstance, ["handle_new_event"], "dagster_event_writes")

        resources = ResourceSet(settings).as_dict()
        home = work / "dagster_home"
        home.mkdir()
        with DagsterInstance.local_temp(str(home)) as instance:
            instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, [symbol])
            for label, day in (("cold_day_from_rest", last), ("rerun_unchanged", last)):
                timers.reset()
                pk = partition_key(day, symbol)
                t0 = time.perf_counter()
                result = materialize(
                    [*CANDLE_ASSETS, *QUALITY_ASSETS], instance=instance, partition_key=pk, resources=resources
                )
                wall = time.perf_counter() - t0
                steps = instance.get_run_step_stats(result.run_id)
                in_steps = sum((s.end_time or 0) - (s.start_time or 0) for s in steps)
                measured = {k: round(v, 3) for k, v in sorted(timers.seconds.items())}
                our_io = sum(v for k, v in timers.seconds.items() if k != "dagster_event_writes")
                events = timers.seconds.get("dagster_event_writes", 0.0)
                out[label] = {
                    "success": result.success,
                    "wall_s": round(wall, 3),
                    "steps": len(steps),
                    "seconds": measured,
                    "calls": dict(sorted(timers.calls.items())),
                    "our_io_s (rest + store + metadata)": round(our_io, 3),
                    "other_s (compute + Dagster step/run framework)": round(max(0.0, wall - our_io - events), 3),
                    "dagster_outside_steps_s": round(max(0.0, wall - in_steps), 3),
                    "share_of_wall": {k: round(v / wall, 3) for k, v in sorted(timers.seconds.items())},
                }
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dm_assets.definitions"], check=True, cwd=ROOT)
        out["run_process_start_import_code_location_s"] = round(time.perf_counter() - t0, 3)
        rest = exchange.requests_to("/fapi/v1/klines")
        weight = sum(_weight(int(p.get("limit", 500))) for p in rest)
        out["rest_requests"] = len(rest)
        out["weight_floor_s_per_partition"] = round(weight / 2400 * 60, 3)
    finally:
        exchange.stop()
        mongo.stop()
    print(json.dumps(out, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT")
    ap.add_argument("--end", default=None, help="last day (ISO); default: yesterday")
    ap.add_argument("--max-concurrent-runs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--per-run", type=int, default=10, help="partitions per run (0 = single run)")
    ap.add_argument("--profile", action="store_true", help="profile one partition in-process instead")
    args = ap.parse_args()
    if args.profile:
        profile_partition(args)
        return
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
