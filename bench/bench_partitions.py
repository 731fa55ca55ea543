"""Dagster partition scale on PostgreSQL: 400 dynamic symbols × 365 days (~146,000 date × symbol
partitions of every candle asset) beside the same with 3 symbols, in one run; prints JSON.

Dagster recommends at most ~100,000 partitions per asset. This measures, on a fresh
PostgreSQL database per scenario (the production instance storage), what the design relies on:

Every day but the newest ``--gapped-days`` is materialized for every symbol (a year of history,
written as runless materialization events in batches), the newest days are empty.

* ``gap_sensor_tick``: the daemon's real sensor iteration (``execute_sensor_iteration`` against a
  code server subprocess, as dagster-daemon runs it): the sensor scans up to 30 partitions and the
  daemon creates a queued run per gapped partition. The store is empty, so every scanned
  partition is gapped: the worst case for run creation.
* ``gap_sensor_evaluation``: the sensor body alone, in process (``evaluate_tick``), median of 3.
* ``partition_health_graphql``: the GraphQL query the UI's partition view sends for
  ``candles/candles_1m`` (partition keys by dimension + ``assetPartitionStatuses``), cold (status
  cache rebuilt) and warm; and ``partitionStats`` (the asset list's counts).
* ``get_status_by_partition``: ``DagsterInstance.get_status_by_partition`` for every key.
* ``enumerate_keys``: ``get_partition_keys`` of the date × symbol definition (what a
  "backfill everything" has to materialize in memory).

    .venv/bin/python bench/bench_partitions.py                      # 400 vs 3 symbols, 365 days
    .venv/bin/python bench/bench_partitions.py --symbols 400,3 --days 365 --gapped-days 3

Each scenario has its own database (created here, dropped at the end unless --keep).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        __typename
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses {
          materializedPartitions materializingPartitions failedPartitions
        }
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey primaryDimStartTime primaryDimEndTime
            secondaryDim {
              __typename
              ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
              ... on DefaultPartitionStatuses {
                materializedPartitions materializingPartitions failedPartitions
              }
            }
          }
        }
      }
    }
  }
}
"""

PARTITION_STATS_QUERY = """
query AssetPartitionStats($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode { partitionStats { numMaterialized numMaterializing numFailed numPartitions } }
  }
}
"""


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def fresh_database(base_url: str) -> str:
    """A new, empty PostgreSQL database on the server of ``base_url``; returns its URL."""
    import psycopg2
    from sqlalchemy.engine import make_url

    admin = make_url(base_url)
    name = f"dm_bench_partitions_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(
        host=admin.host,
        port=admin.port or 5432,
        user=admin.username,
        password=admin.password or "",
        dbname="postgres",
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    import psycopg2
    from sqlalchemy.engine import make_url

    u = make_url(url)
    conn = psycopg2.connect(
        host=u.host, port=u.port or 5432, user=u.username, password=u.password or "", dbname="postgres"
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)')
    conn.close()


def _materialization_entry(materialization: Any) -> Any:
    """A runless materialization event, as ``report_runless_asset_event`` builds it, for batch writes."""
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    return EventLogEntry(
        error_info=None,
        level=logging.INFO,
        user_message="",
        run_id=RUNLESS_RUN_ID,
        timestamp=time.time(),
        step_key=None,
        job_name=RUNLESS_JOB_NAME,
        dagster_event=DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            event_specific_data=StepMaterializationData(materialization),
            job_name=RUNLESS_JOB_NAME,
        ),
    )


def scenario(n_symbols: int, days: int, gapped_days: int, pg_base: str, keep: bool, n_ticks: int) -> dict[str, Any]:
    materialized_days = days - gapped_days
    # Imported here: DM_* must be set before dm_assets reads its settings (main() sets them).
    from dagster import AssetKey, AssetMaterialization, DagsterInstance, build_sensor_context
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.events.log import EventLogEntry
    from dagster._core.test_utils import freeze_time
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.sensor import execute_sensor_iteration
    from dagster_graphql.test.utils import execute_dagster_graphql

    from dm_assets.candles.sensors import gap_sensor
    from dm_assets.definitions import defs
    from dm_assets.partitions import DATE_SYMBOL_PARTITIONS, SYMBOLS_PARTITIONS_NAME, partition_key

    pg_url = fresh_database(pg_base)
    home = Path(tempfile.mkdtemp(prefix="dm_bench_partitions_"))
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url: " + json.dumps(pg_url) + "\n"
        # Runs requested by the sensor are queued, never launched: only Dagster's own cost is measured.
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    out: dict[str, Any] = {"symbols": n_symbols, "days": days}
    symbols = [f"S{i:03d}USDT" for i in range(n_symbols)]
    asset_key = AssetKey(["candles", "candles_1m"])
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            t, _ = timed(lambda: instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, symbols))
            out["register_symbols_s"] = round(t, 3)
            t, keys = timed(lambda: DATE_SYMBOL_PARTITIONS.get_partition_keys(dynamic_partitions_store=instance))
            out["partitions"] = len(keys)
            out["enumerate_keys_s"] = round(t, 3)

            # A year of history: every day materialized for every symbol except the newest
            # `gapped_days` (what the gap sensor scans), written in batches as runless events.
            today = dt.datetime.now(dt.UTC).date()
            done_days = [
                (today - dt.timedelta(days=i)).isoformat() for i in range(gapped_days, gapped_days + materialized_days)
            ]
            t0 = time.perf_counter()
            batch: list[EventLogEntry] = []
            for day in done_days:
                for sym in symbols:
                    batch.append(
                        _materialization_entry(AssetMaterialization(asset_key, partition=partition_key(day, sym)))
                    )
                    if len(batch) >= 2000:
                        instance.event_log_storage.store_event_batch(batch)
                        batch = []
            if batch:
                instance.event_log_storage.store_event_batch(batch)
            out["materializations"] = len(done_days) * n_symbols
            out["record_materializations_s"] = round(time.perf_counter() - t0, 2)

            t, status = timed(
                lambda: instance.get_status_by_partition(asset_key, [str(k) for k in keys], DATE_SYMBOL_PARTITIONS)
            )
            out["get_status_by_partition_s"] = round(t, 3)
            out["get_status_by_partition_materialized"] = sum(1 for v in (status or {}).values() if v is not None)

            target = ModuleTarget(
                module_name="dm_assets.definitions",
                attribute="defs",
                working_directory=str(ROOT),
                location_name="market_data",
            )
            with WorkspaceProcessContext(instance, target) as ctx:
                request = ctx.create_request_context()
                variables = {"assetKey": {"path": asset_key.path}}
                health = []
                for _ in range(3):  # the first rebuilds the asset status cache; the rest read it
                    t, res = timed(lambda r=request: execute_dagster_graphql(r, PARTITION_HEALTH_QUERY, variables))
                    assert not res.errors, res.errors
                    assert res.data["assetNodeOrError"]["__typename"] == "AssetNode", res.data
                    health.append(t)
                    request = ctx.create_request_context()
                out["partition_health_graphql_cold_s"] = round(health[0], 3)
                out["partition_health_graphql_warm_s"] = round(statistics.median(health[1:]), 3)
                out["partition_health_response_bytes"] = len(json.dumps(res.data))
                t, res = timed(lambda: execute_dagster_graphql(request, PARTITION_STATS_QUERY, variables))
                assert not res.errors, res.errors
                out["partition_stats_graphql_s"] = round(t, 3)
                out["partition_stats"] = res.data["assetNodeOrError"]["partitionStats"]

                if n_ticks >= 2:
                    # The daemon's sensor iteration, ticks 130 s apart (the sensor's minimum interval is 120 s).
                    location = request.get_code_location("market_data")
                    remote_sensor = location.get_repository("__repository__").get_sensor("gap_sensor")
                    instance.start_sensor(remote_sensor)
                    logger = logging.getLogger("bench_partitions")
                    ticks, runs = [], []
                    now = time.time()
                    for i in range(n_ticks):
                        with freeze_time(dt.datetime.fromtimestamp(now + 130 * i, tz=dt.UTC)):
                            t, _ = timed(lambda: list(execute_sensor_iteration(ctx, logger, None, None)))
                        ticks.append(t)
                        created = instance.get_run_ids()
                        runs.append(len(created))
                        # Forget the runs so that the next tick (same gaps, same run keys) creates them again:
                        # every measured tick pays for its run creation, the worst case.
                        for run_id in created:
                            instance.delete_run(run_id)
                    recorded = instance.get_ticks(
                        remote_sensor.get_remote_origin_id(), remote_sensor.selector_id, limit=n_ticks
                    )
                    out["gap_sensor_daemon_first_tick_s"] = round(ticks[0], 3)
                    out["gap_sensor_daemon_tick_s"] = [round(t, 3) for t in ticks[1:]]
                    out["gap_sensor_daemon_tick_median_s"] = round(statistics.median(ticks[1:]), 3)
                    out["gap_sensor_runs_per_tick"] = runs
                    out["gap_sensor_tick_status"] = [tick.status.value for tick in reversed(recorded)]
                    out["gap_sensor_ms_per_run_created"] = (
                        round(1000 * statistics.median(t / r for t, r in zip(ticks[1:], runs[1:], strict=True) if r), 1)
                        if any(runs[1:])
                        else None
                    )

            # The sensor body alone, in process (no gRPC, no run creation).
            evals = []
            resources = defs.resources
            for _ in range(3):
                with (
                    build_sensor_context(
                        instance=instance, resources=resources, repository_def=defs.get_repository_def()
                    ) as context,
                    partition_loading_context(dynamic_partitions_store=instance),
                ):
                    t, result = timed(lambda ctx=context: gap_sensor.evaluate_tick(ctx))
                evals.append(t)
            out["gap_sensor_evaluation_median_s"] = round(statistics.median(evals), 3)
            out["gap_sensor_evaluation_run_requests"] = len(result.run_requests or [])
    finally:
        if not keep:
            drop_database(pg_url)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-url", default=os.environ.get("DM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--symbols", default="400,3", help="comma-separated symbol counts; the last is the anchor")
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument(
        "--gapped-days", type=int, default=3, help="newest days left unmaterialized (the gap sensor's window)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the scenario databases")
    ap.add_argument("--ticks", type=int, default=4, help="daemon ticks of the gap sensor (first is cold); <2 skips")
    args = ap.parse_args()

    # Code servers started below write their logs to inherited stdout: keep stdout for the JSON.
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    from dm_resources.embedded import free_port, start_secantus
    from dm_resources.metadata.store import MetadataStore

    work = Path(tempfile.mkdtemp(prefix="dm_bench_partitions_"))
    mongo_port = free_port()
    mongo = start_secantus(mongo_port, work / "mongo")
    mongo_url = f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"
    meta_url = f"sqlite:///{work / 'metadata.db'}"
    MetadataStore(meta_url).migrate()
    start = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=args.days - 1)  # `days` partitions, today included
    os.environ.update(
        {
            "DM_PARTITION_START": start.isoformat(),
            "DM_AUTOMATION": "false",
            "DM_MONGO_URL": mongo_url,
            "DM_MONGO_DB": "bench_partitions",
            "DM_METADATA_URL": meta_url,
            "DM_BINANCE_REST_URL": "http://127.0.0.1:9",  # never called: the sensor only reads
            "DM_SYMBOLS": "S000USDT",
        }
    )
    logging.basicConfig(level=logging.WARNING)
    counts = [int(x) for x in args.symbols.split(",")]
    try:
        results = [scenario(n, args.days, args.gapped_days, args.pg_url, args.keep, args.ticks) for n in counts]
    finally:
        mongo.stop()
    big, anchor = results[0], results[-1]
    ratios = {
        k: round(big[k] / anchor[k], 2) if anchor.get(k) else None
        for k in (
            "enumerate_keys_s",
            "get_status_by_partition_s",
            "partition_health_graphql_cold_s",
            "partition_health_graphql_warm_s",
            "partition_stats_graphql_s",
            "gap_sensor_daemon_tick_median_s",
            "gap_sensor_evaluation_median_s",
        )
    }
    print(
        json.dumps(
            {
                "bench": "partitions",
                "instance_storage": "postgresql (dagster-postgres)",
                "cores": os.cpu_count(),
                "scenarios": results,
                "ratio_first_to_anchor": ratios,
            },
            indent=2,
        ),
        file=json_out,
    )
    json_out.flush()


if __name__ == "__main__":
    main()
