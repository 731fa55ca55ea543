"""A REST backfill of N days × symbols through Dagster, beside the floor Binance's weight limit sets; prints JSON.

* ``api_path``: ``POST /backfill/start`` (the API in process, over HTTP) to the job's status
  ``success`` — every minute fetched from REST, stored, every interval derived, checked, audited and
  scored. Runs are launched straight into the run queue (``api/backfills.py``).
* ``ui_daemon_path``: the same size of backfill on the days before, as the UI's "Materialize…"
  dialog launches it (``launchPartitionBackfill``), split into runs and launched by the backfill
  daemon (which sleeps 30 s between iterations).
* ``rest_weight_floor``: the least request weight the minutes cost (pages of 499 klines, weight 2:
  6 per day) over Binance's 2400 weight per minute — the anchor; ``wall_over_floor`` is the ratio.

Everything is real but the exchange: SecantusDB, SQLite metadata, ``dagster dev`` (webserver +
daemon, SQLite instance, our run coordinator) and the fake exchange's weight accounting.

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
    import httpx

    from api.app import create_app
    from api.testing import serve
    from dm_resources.binance import least_weight
    from dm_resources.contracts import BACKFILL_ASSET_PATHS
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.run_coordinator import instance_yaml
    from dm_resources.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT")
    ap.add_argument("--end", default=None, help="last day (ISO); default: yesterday")
    ap.add_argument("--max-concurrent-runs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--per-run", type=int, default=1000, help="partitions per run (DM_BACKFILL_PARTITIONS_PER_RUN)")
    ap.add_argument("--skip-daemon", action="store_true", help="only the API path")
    ap.add_argument("--profile", action="store_true", help="profile one partition in-process instead")
    args = ap.parse_args()
    if args.profile:
        profile_partition(args)
        return
    symbols = args.symbols.split(",")
    last = dt.date.fromisoformat(args.end) if args.end else dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    # Two windows of the same size: the API path first, then the daemon path on the days before it
    # (both fill every minute from REST: nothing is stored for either window beforehand).
    api_days = [(last - dt.timedelta(days=i)).isoformat() for i in range(args.days)][::-1]
    ui_days = [(last - dt.timedelta(days=args.days + i)).isoformat() for i in range(args.days)][::-1]

    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    mongo_port, dagster_port = free_port(), free_port()
    mongo = start_secantus(mongo_port, work / "mongo")
    exchange = FakeExchange(symbols=symbols).start()
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml(max_concurrent_runs=args.max_concurrent_runs))
    mongo_url = f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"
    meta_url = f"sqlite:///{work / 'meta.db'}"
    MetadataStore(meta_url).migrate()
    env = {
        "DM_MONGO_URL": mongo_url,
        "DM_MONGO_DB": "bench",
        "DM_METADATA_URL": meta_url,
        "DM_BINANCE_REST_URL": exchange.url,
        "DM_BINANCE_ARCHIVE_URL": "",  # the REST path: every minute from REST
        "DM_SYMBOLS": ",".join(symbols),
        "DM_PARTITION_START": ui_days[0],
        "DM_AUTOMATION": "false",
        "DM_BACKFILL_PARTITIONS_PER_RUN": str(args.per_run),
        # As production (dagster.yaml): batched materializations, one planned event per asset.
        "DAGSTER_EVENT_BATCH_SIZE": "500",
        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    }
    dagster = None
    out: dict[str, object] = {"symbols": symbols, "days": args.days, "partitions": args.days * len(symbols)}
    try:
        dagster = start_dagster_dev(dagster_port, str(home), env, log_dir=work)
        gql = DagsterGraphQL(f"http://127.0.0.1:{dagster_port}/graphql", timeout=120)
        store = MongoStore(mongo_url, "bench")
        # The floor of the work itself: Binance's weight limit over the least weight per day of 1m klines.
        floor_weight = least_weight(1440) * args.days * len(symbols)
        floor_s = floor_weight / 2400 * 60
        out["rest_weight_floor"] = {"weight": floor_weight, "seconds": round(floor_s, 1), "weight_per_day": 6}

        # -- the API path: POST /backfill/start to the last partition stored, checks and health included.
        settings = load_settings(
            mongo_url=mongo_url,
            mongo_db="bench",
            metadata_url=meta_url,
            symbols=symbols,
            api_token="bench-token",
            dagster_graphql_url=gql.url,
            backfill_partitions_per_run=args.per_run,
            partition_start=ui_days[0],
        )
        app = create_app(settings, mongo=store, meta=MetadataStore(meta_url))
        body = {"pairs": symbols, "start": f"{api_days[0]}T00:00:00Z", "end": f"{api_days[-1]}T23:59:59Z"}
        with serve(app) as base, httpx.Client(base_url=base, timeout=120) as http:
            before = len(exchange.requests_to("/fapi/v1/klines"))
            t0 = time.perf_counter()
            resp = http.post("/backfill/start", json=body, headers={"Authorization": "Bearer bench-token"})
            resp.raise_for_status()
            job = resp.json()
            status = "requested"
            while time.perf_counter() - t0 < args.timeout:
                status = http.get(f"/backfill/jobs/{job['id']}").json()["status"]
                if status in ("success", "failure", "partial", "canceled"):
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - t0
        rest = exchange.requests_to("/fapi/v1/klines")[before:]
        weight = sum(_weight(int(p.get("limit", 500))) for p in rest)
        out["api_path"] = {
            "status": status,
            "runs": len(job["runs"]),
            "wall_s": round(wall, 1),
            "wall_over_floor": round(wall / floor_s, 2),
            "rest_requests": len(rest),
            "rest_weight": weight,
            "candles_1m_stored": _stored(store, symbols, api_days),
            "candles_1m_expected": len(api_days) * len(symbols) * 1440,
            "health_rows": len(MetadataStore(meta_url).health(day_from=dt.date.fromisoformat(api_days[0]))),
            **_run_stats(home, job["runs"]),
        }

        # -- the UI/daemon path: the "Materialize…" dialog's backfill, split and launched by the daemon.
        if not args.skip_daemon:
            partitions = [f"{d}|{s}" for d in ui_days for s in symbols]
            before = len(exchange.requests_to("/fapi/v1/klines"))
            t0 = time.perf_counter()
            backfill_id = gql.launch_backfill(
                [list(p) for p in BACKFILL_ASSET_PATHS], partitions, tags={"dagster/from_ui": "true"}, title="bench"
            )
            state = gql.wait_for_backfill(backfill_id, timeout=args.timeout, poll=1.0)
            wall = time.perf_counter() - t0
            rest = exchange.requests_to("/fapi/v1/klines")[before:]
            out["ui_daemon_path"] = {
                "status": state.status,
                "runs": len(state.runs),
                "runs_succeeded": sum(r["status"] == "SUCCESS" for r in state.runs),
                "wall_s": round(wall, 1),
                "wall_over_floor": round(wall / floor_s, 2),
                "rest_requests": len(rest),
                "rest_weight": sum(_weight(int(p.get("limit", 500))) for p in rest),
                "candles_1m_stored": _stored(store, symbols, ui_days),
                **_run_stats(home, [r["runId"] for r in state.runs]),
            }
        store.close()
    finally:
        if dagster is not None:
            dagster.stop(signal.SIGINT, timeout=60)
        exchange.stop()
        mongo.stop()
    print(json.dumps(out, indent=2))


def _run_stats(home: Path, run_ids: list[str]) -> dict[str, object]:
    """Where a path's wall time went: queue + process start before the first step, and time in steps."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as inst:
        starts, steps = [], {}
        for rid in run_ids:
            rec = inst.get_run_record_by_id(rid)
            if rec is not None and rec.start_time:
                starts.append(rec.start_time - rec.create_timestamp.timestamp())
            for st in inst.get_run_step_stats(rid):
                steps[st.step_key] = steps.get(st.step_key, 0.0) + (st.end_time or 0) - (st.start_time or 0)
    return {
        "run_created_to_started_s": [round(x, 1) for x in starts],
        "seconds_in_steps": {k: round(v, 1) for k, v in sorted(steps.items())},
    }


def _stored(store: MongoStore, symbols: list[str], days: list[str]) -> int:
    from dm_assets.partitions import day_bounds_ms

    lo, hi = day_bounds_ms(days[0])[0], day_bounds_ms(days[-1])[1]
    return sum(CandleStore(store).count(s, "1m", lo, hi) for s in symbols)


if __name__ == "__main__":
    main()
