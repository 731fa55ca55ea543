"""History from Binance's archive: N symbols × M months through Dagster, beside a bare import; prints JSON.

What it measures, side by side in one run, on the same machine and servers:

* **ours** — every candle interval (1m, 5m, 15m, 1h, 4h, 1d), every check, audit rows and health rows
  for ``symbols × days`` date × symbol partitions, through Dagster as production runs them: ``dagster
  dev`` (webserver + daemon) on a **PostgreSQL** instance (``DM_TEST_POSTGRES_URL``, a fresh
  database, event batching on, the storage ``dagster.yaml`` names: ``dm_resources.dagster_storage``,
  pooled connections; ``--stock-storage`` for dagster-postgres's own), runs launched as ``POST
  /backfill/start`` launches them (rectangles of ``--per-run`` partitions, straight into the run
  queue, ``--concurrency`` at a time), each run a process of its own with its materializations and
  check evaluations written to PostgreSQL. Timed from the first launch to the last run finished.
* **anchor** — the bare import: the same archive downloads from the same local mirror, the same
  checksum checks and parsing (``ArchiveClient.fetch``), the same bucket writes of all six intervals
  (``resample`` + ``CandleStore.sync_ranges``), in ``--concurrency`` plain processes, no Dagster, no
  checks, no audit or health.
* **engine without Dagster** — what a candle step does for its partitions (``Engine.run``: checks,
  screening, audit and health rows included), called directly in ``--concurrency`` processes.

Every worker (the run's candle step, the anchor's and the engine's processes) starts its work with
``dm_resources.heap.freeze_heap`` (``gc.freeze``), so the garbage collector treats them alike.

``ratio`` = ours / anchor (target ≤ 1.5); ``dagster_cost_per_partition_s`` = (ours − engine) /
partitions (target ≤ 0.1 s); ``quality_work_per_partition_s`` = (engine − anchor) / partitions.
``timeline_s`` says where a run's time goes (see ``_run_timeline``; ``slot_idle_s`` is the wall time
a concurrency slot had no run executing: dequeue, process spawn, imports, code location).

Measured here (2 cores, 10 symbols × 182 days = 1,820 partitions, two runs of five symbols side by
side, which the run queue's per-symbol locks allow): ours 37.5 / 38.7 / 37.5 s (0.021 s a partition),
anchor 16.5 / 17.0 / 16.4 s: **2.27–2.29×**; engine without Dagster 22.6 / 27.1 / 24.5 s
(1.37–1.60×); Dagster's own cost 0.006–0.008 s a partition. Of ours' ~37.5 s, ~4.4 s is slot idle
(each run ~3.4 s from launch to its step); the candle steps took ~62 s and the quality steps ~3.2 s
of run time over the 2 slots. Before the locks (ten one-symbol runs in five waves of two, as a
several-symbol run held one shared slot): 48.4 s, 2.9–3.0×; with ``--stock-storage`` 64.2 s; at the
start of this work 71.1 s, 4.0×.

The mirror (``tests/archive_mirror.py``) serves files generated from the simulated exchange's price
path; they are generated before anything is timed (generation is not the work measured).

    .venv/bin/python bench/bench_history.py                         # 10 symbols × 6 months = 1,820 partitions
    .venv/bin/python bench/bench_history.py --symbols 2 --days 20   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SYMBOLS = (
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "BNBUSDT",
    # Not XRPUSDT: the simulated market prices every symbol in cents, which at XRP's ~1.9 USD is a
    # 0.5 % tick (Binance's is 0.0001), and one-tick wicks then exceed the bad-print floor.
    "ATOMUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "LTCUSDT",
    "DOTUSDT",
    "LINKUSDT",
    "AVAXUSDT",
    "TRXUSDT",
)


def history_days(n: int, today: dt.date) -> list[str]:
    """The last ``n`` days of the months that have ended (their monthly files are published)."""
    last = today.replace(day=1) - dt.timedelta(days=1)
    return [(last - dt.timedelta(days=i)).isoformat() for i in range(n)][::-1]


# --------------------------------------------------------------------------- the anchor


def _anchor_worker(mongo_url: str, db: str, archive_url: str, symbols: list[str], days: list[str]) -> dict[str, Any]:
    """The bare import of ``symbols`` × ``days``: download, check, parse, derive, write. No Dagster, no checks."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    from dm_assets.candles import compute
    from dm_assets.candles.history import DOWNLOAD_WORKERS
    from dm_assets.partitions import day_bounds_ms
    from dm_resources.binance_archive import ArchiveClient, ArchiveKey
    from dm_resources.candle_store import CandleStore
    from dm_resources.contracts import HIGHER_CANDLE_INTERVALS
    from dm_resources.heap import freeze_heap
    from dm_resources.mongo import MongoStore

    freeze_heap("run worker", collect=True)  # as the run worker does, so the GC treatment is the same everywhere
    store = MongoStore(mongo_url, db)
    store.ensure_indexes()
    cs = CandleStore(store)
    client = ArchiveClient(archive_url)
    months = sorted({d[:7] for d in days})
    rows = 0
    for symbol in symbols:
        keys = [ArchiveKey.monthly(symbol, dt.date.fromisoformat(m + "-01")) for m in months]
        with ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool:
            files = list(pool.map(client.fetch, keys))
        for f in files:
            parts: dict[str, list[tuple[int, int, pd.DataFrame]]] = {}
            for day in (d for d in days if d[:7] == f.key.label):
                lo, hi = day_bounds_ms(day)
                one = f.day(lo, hi).reset_index(drop=True)
                one = one.assign(close_time=one["open_time"] + 59_999, source="archive", flags=[[]] * len(one))
                parts.setdefault("1m", []).append((lo, hi, one))
                for iv in HIGHER_CANDLE_INTERVALS:
                    bars = compute.resample(one, iv).candles
                    parts.setdefault(iv, []).append((lo, hi, bars.assign(flags=[[]] * len(bars))))
                rows += len(one)
            for iv, items in parts.items():
                cs.sync_ranges(symbol, iv, items, replace=iv != "1m")
    store.close()
    return {"rows": rows, "files": client.stats.files, "bytes": client.stats.bytes}


def run_anchor(mongo_url: str, archive_url: str, symbols: list[str], days: list[str], workers: int) -> dict[str, Any]:
    db = f"anchor_{uuid.uuid4().hex[:6]}"
    shares = [symbols[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        out = pool.starmap(_anchor_worker, [(mongo_url, db, archive_url, share, days) for share in shares if share])
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 2),
        "db": db,
        "rows_1m": sum(o["rows"] for o in out),
        "files": sum(o["files"] for o in out),
        "bytes": sum(o["bytes"] for o in out),
    }


# --------------------------------------------------------------------------- the same engine without Dagster


def _engine_worker(
    mongo_url: str, db: str, archive_url: str, rest_url: str, meta_url: str, symbols: list[str], days: list[str]
) -> int:
    """What a candle step does for its partitions (checks, audit, health included), called directly."""
    from dm_assets.candles.engine import Engine
    from dm_assets.candles.history import ArchiveBatch
    from dm_resources.binance import BinanceClient
    from dm_resources.binance_archive import ArchiveClient
    from dm_resources.heap import freeze_heap
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.mongo import MongoStore

    freeze_heap("run worker", collect=True)  # as the run worker does
    store = MongoStore(mongo_url, db)
    store.ensure_indexes()
    meta = MetadataStore(meta_url)
    client = BinanceClient(rest_url)
    # As a run of ours: the worker's symbols × days in one call (plan_runs packs a run's symbols so).
    engine = Engine(
        store, meta, client, archive=ArchiveBatch(ArchiveClient(archive_url), run_id=f"engine-{symbols[0]}")
    )
    done = len(engine.run([(d, s) for s in symbols for d in days]).partitions)
    store.close()
    meta.close()
    return done


def run_engine(
    mongo_url: str, archive_url: str, rest_url: str, work: Path, symbols: list[str], days: list[str], workers: int
) -> dict[str, Any]:
    from dm_resources.metadata.store import MetadataStore

    db = f"engine_{uuid.uuid4().hex[:6]}"
    meta_url = f"sqlite:///{work / 'metadata-engine.db'}"
    MetadataStore(meta_url).migrate()
    shares = [symbols[i::workers] for i in range(workers)]
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        done = pool.starmap(
            _engine_worker, [(mongo_url, db, archive_url, rest_url, meta_url, share, days) for share in shares if share]
        )
    return {"seconds": round(time.perf_counter() - t0, 2), "partitions": sum(done), "db": db}


# --------------------------------------------------------------------------- ours: Dagster on PostgreSQL


def run_dagster(
    args: argparse.Namespace,
    work: Path,
    mongo_url: str,
    archive_url: str,
    rest_url: str,
    symbols: list[str],
    days: list[str],
    pg_url: str,
) -> dict[str, Any]:
    from dagster import AssetKey, DagsterInstance

    from api.backfills import ASSET_JOB, plan_runs
    from dm_resources.contracts import AUDIT_RESULTS_PATH, CANDLE_ASSET_PATHS, HEALTH_SCORES_PATH
    from dm_resources.dagster_client import DagsterGraphQL
    from dm_resources.embedded import free_port, start_dagster_dev
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.run_coordinator import instance_yaml

    home = work / "dagster_home"
    home.mkdir()
    if args.stock_storage:  # dagster-postgres as shipped: a new connection per query
        storage = "storage:\n  postgres:\n    postgres_url: " + json.dumps(pg_url) + "\n"
    else:  # as the production instance is configured (dagster.yaml): pooled connections
        storage = (
            "storage:\n  custom:\n    module: dm_resources.dagster_storage\n    class: PooledPostgresStorage\n"
            "    config:\n      postgres_url: " + json.dumps(pg_url) + "\n"
        )
    (home / "dagster.yaml").write_text(instance_yaml(max_concurrent_runs=args.concurrency, extra=storage))
    meta_url = args.metadata_url or f"sqlite:///{work / 'metadata.db'}"
    MetadataStore(meta_url).migrate()
    db = f"ours_{uuid.uuid4().hex[:6]}"
    env = {
        "DM_MONGO_URL": mongo_url,
        "DM_MONGO_DB": db,
        "DM_METADATA_URL": meta_url,
        "DM_BINANCE_REST_URL": rest_url,
        "DM_BINANCE_ARCHIVE_URL": archive_url,
        "DM_SYMBOLS": ",".join(symbols),
        "DM_PARTITION_START": days[0],
        "DM_AUTOMATION": "false",
        "DM_BACKFILL_PARTITIONS_PER_RUN": str(args.per_run),
        "DAGSTER_EVENT_BATCH_SIZE": str(args.event_batch),
    }
    if not args.planned_per_partition:  # as the production instance is configured (dagster.yaml)
        env["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] = "true"
    port = free_port()
    dagster = start_dagster_dev(port, str(home), env, log_dir=work, timeout=300)
    try:
        with DagsterInstance.from_config(str(home)) as inst:
            inst.add_dynamic_partitions("symbols", symbols)
            order = list(inst.get_dynamic_partitions("symbols"))
        gql = DagsterGraphQL(f"http://127.0.0.1:{port}/graphql", timeout=120)
        plans = plan_runs(days, symbols, order, args.per_run)
        assets = [list(p) for p in (*CANDLE_ASSET_PATHS, AUDIT_RESULTS_PATH, HEALTH_SCORES_PATH)]
        t0 = time.perf_counter()
        launched_at = time.time()
        run_ids = [
            gql.launch_run(ASSET_JOB, asset_selection=assets, tags={"dm/origin": "bench", **p.tags()}) for p in plans
        ]
        statuses = {r: gql.wait_for_run(r, timeout=args.timeout, poll=1.0) for r in run_ids}
        seconds = time.perf_counter() - t0
        with DagsterInstance.from_config(str(home)) as inst:
            runs = [inst.get_run_record_by_id(r) for r in run_ids]
            starts = [(rec.start_time or 0) - rec.create_timestamp.timestamp() for rec in runs if rec is not None]
            timeline = _run_timeline(inst, run_ids, t_first_launch=launched_at, concurrency=args.concurrency)
            steps = [s for r in run_ids for s in inst.get_run_step_stats(r)]
            in_steps = {s.step_key: 0.0 for s in steps}
            for s in steps:
                in_steps[s.step_key] += (s.end_time or 0) - (s.start_time or 0)
            materialized = {
                "/".join(p): len(inst.get_materialized_partitions(AssetKey(list(p))))
                for p in (*CANDLE_ASSET_PATHS, HEALTH_SCORES_PATH)
            }
            evaluations = sum(
                len(
                    inst.event_log_storage.get_asset_check_execution_history(
                        check_key=_check_key("1m", name), limit=100_000
                    )
                )
                for name in ("no_gaps", "ohlc_sane", "no_bad_prints")
            )
        from dm_resources.candle_store import CandleStore
        from dm_resources.mongo import MongoStore

        store = MongoStore(mongo_url, db)
        lo = int(dt.datetime.fromisoformat(days[0]).replace(tzinfo=dt.UTC).timestamp() * 1000)
        hi = int(dt.datetime.fromisoformat(days[-1]).replace(tzinfo=dt.UTC).timestamp() * 1000) + 86_400_000
        stored = {iv: sum(CandleStore(store).count(s, iv, lo, hi) for s in symbols) for iv in ("1m", "1h", "1d")}
        bucket_bytes = int(store.db.command("collStats", "candle_buckets").get("size", 0))
        store.close()
        meta = MetadataStore(meta_url)
        health_rows = len(meta.health(day_from=dt.date.fromisoformat(days[0]), day_to=dt.date.fromisoformat(days[-1])))
        meta.close()
        return {
            "seconds": round(seconds, 2),
            "runs": len(run_ids),
            "runs_succeeded": sum(1 for s in statuses.values() if s == "SUCCESS"),
            "partitions_per_run": sorted({p.partitions for p in plans}),
            "run_start_overhead_s_mean": round(sum(starts) / len(starts), 2) if starts else None,
            "timeline_s": timeline,
            "seconds_in_steps": {k: round(v, 1) for k, v in sorted(in_steps.items())},
            "materialized_partitions": materialized,
            "check_evaluations_1m_sample": evaluations,
            "stored_candles": stored,
            "bucket_bytes_per_partition": round(bucket_bytes / max(1, len(symbols) * len(days))),
            "health_rows": health_rows,
        }
    finally:
        dagster.stop(signal.SIGINT, timeout=60)


def _run_timeline(inst: Any, run_ids: list[str], *, t_first_launch: float, concurrency: int) -> dict[str, float]:
    """Where a run's wall time goes, from its own event log (seconds; the phases are means over the runs).

    ``to_first_step``: run start → first step start (plan, resources); ``steps``: first step
    start → last step end;
    ``to_end``: last step end → run success. ``slot_idle_s``: from the first launch to the last
    run's end, the slot-seconds no run process was between its start and its end (the queue's
    dequeue loop, process spawn, imports, instance and code-location load), over ``concurrency``.
    """
    from dagster import DagsterEventType

    kinds = {
        DagsterEventType.RUN_START,
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
        DagsterEventType.RUN_SUCCESS,
        DagsterEventType.RUN_FAILURE,
    }
    parts: dict[str, list[float]] = {}
    spans: list[tuple[float, float]] = []
    for run_id in run_ids:
        seen: dict[str, list[float]] = {}
        for e in inst.all_logs(run_id, of_type=kinds):
            seen.setdefault(e.dagster_event.event_type.name, []).append(e.timestamp)

        def first(k: str, seen: dict[str, list[float]] = seen) -> float | None:
            return min(seen[k]) if k in seen else None

        def last(*ks: str, seen: dict[str, list[float]] = seen) -> float | None:
            vals = [t for k in ks for t in seen.get(k, [])]
            return max(vals) if vals else None

        start = first("RUN_START")
        s0, s1 = first("STEP_START"), last("STEP_SUCCESS", "STEP_FAILURE")
        end = last("RUN_SUCCESS", "RUN_FAILURE")
        for name, a, b in (
            ("to_first_step", start, s0),
            ("steps", s0, s1),
            ("to_end", s1, end),
        ):
            if a is not None and b is not None:
                parts.setdefault(name, []).append(b - a)
        if start is not None and end is not None:
            spans.append((start, end))
    out = {k: round(sum(v) / len(v), 2) for k, v in parts.items()}
    if spans:
        wall = max(b for _, b in spans) - t_first_launch
        busy = sum(b - a for a, b in spans)
        out["first_launch_to_last_end"] = round(wall, 2)
        out["run_seconds_total"] = round(busy, 2)
        out["slot_idle_s"] = round((concurrency * wall - busy) / concurrency, 2)
    return out


def _check_key(interval: str, name: str) -> Any:
    from dagster import AssetCheckKey, AssetKey

    from dm_resources.contracts import candle_asset_path

    return AssetCheckKey(AssetKey(candle_asset_path(interval)), name)


# --------------------------------------------------------------------------- main


def main() -> None:
    from bench.bench_partitions import drop_database, fresh_database
    from dm_assets.partitions import day_bounds_ms
    from dm_resources.binance_archive import ArchiveKey
    from dm_resources.embedded import free_port, start_secantus
    from tests.archive_mirror import ArchiveMirror
    from tests.fake_exchange import FakeExchange

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=10)
    ap.add_argument("--days", type=int, default=182, help="days ending with the last complete month (6 months)")
    ap.add_argument("--per-run", type=int, default=1000, help="partitions per run (DM_BACKFILL_PARTITIONS_PER_RUN)")
    ap.add_argument("--concurrency", type=int, default=2, help="runs at a time; the anchor's processes too")
    ap.add_argument("--event-batch", type=int, default=500, help="DAGSTER_EVENT_BATCH_SIZE (0: off)")
    ap.add_argument(
        "--planned-per-partition",
        action="store_true",
        help="leave DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS unset (one planned event per partition)",
    )
    ap.add_argument(
        "--stock-storage",
        action="store_true",
        help="dagster-postgres's own storage (a connection per query) instead of dm_resources.dagster_storage",
    )
    ap.add_argument("--pg-url", default=os.environ.get("DM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--metadata-url", default=None, help="default: a SQLite file")
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--skip-anchor", action="store_true")
    args = ap.parse_args()

    symbols = list(SYMBOLS[: args.symbols])
    days = history_days(args.days, dt.datetime.now(dt.UTC).date())
    months = sorted({d[:7] for d in days})
    work = Path(tempfile.mkdtemp(prefix="bench-history-"))
    mongo_port = free_port()
    mongo = start_secantus(mongo_port, work / "mongo")
    mongo_url = f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"
    exchange = FakeExchange(symbols=symbols).start()  # REST for what the archive lacks: nothing here
    mirror = ArchiveMirror(symbols=symbols).start()
    pg_url = fresh_database(args.pg_url)
    out: dict[str, Any] = {
        "symbols": len(symbols),
        "days": len(days),
        "first_day": days[0],
        "last_day": days[-1],
        "partitions": len(symbols) * len(days),
        "archive_files": len(symbols) * len(months),
        "instance_storage": "postgresql (dagster-postgres" + (")" if args.stock_storage else ", pooled)"),
        "concurrency": args.concurrency,
        "event_batch_size": args.event_batch,
        "planned_events": "per partition" if args.planned_per_partition else "one per asset (subset)",
    }
    try:
        t0 = time.perf_counter()
        mirror.prepare(ArchiveKey.monthly(s, dt.date.fromisoformat(m + "-01")) for s in symbols for m in months)
        out["mirror_generation_s (not timed)"] = round(time.perf_counter() - t0, 1)
        if not args.skip_anchor:
            out["anchor_bare_import"] = run_anchor(mongo_url, mirror.url, symbols, days, args.concurrency)
            out["engine_without_dagster"] = run_engine(
                mongo_url, mirror.url, exchange.url, work, symbols, days, args.concurrency
            )
        out["ours_dagster"] = run_dagster(args, work, mongo_url, mirror.url, exchange.url, symbols, days, pg_url)
        ours = out["ours_dagster"]["seconds"]
        n = out["partitions"]
        out["ours_s_per_partition"] = round(ours / n, 4)
        if not args.skip_anchor:
            anchor = out["anchor_bare_import"]["seconds"]
            out["anchor_s_per_partition"] = round(anchor / n, 4)
            engine = out["engine_without_dagster"]["seconds"]
            out["ratio"] = round(ours / anchor, 2)
            out["engine_over_anchor"] = round(engine / anchor, 2)
            # What Dagster adds over the very same work called directly (run launch, queue, process
            # start, events to PostgreSQL, step framework), and what checks, screening, audit and
            # health add over the bare import.
            out["dagster_cost_per_partition_s"] = round((ours - engine) / n, 4)
            out["quality_work_per_partition_s"] = round((engine - anchor) / n, 4)
        lo, hi = day_bounds_ms(days[0])[0], day_bounds_ms(days[-1])[1]
        out["window_ms"] = [lo, hi]
    finally:
        mirror.stop()
        exchange.stop()
        mongo.stop()
        drop_database(pg_url)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
