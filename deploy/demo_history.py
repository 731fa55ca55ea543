"""``make demo``'s history story: 30 days × the demo's symbols from a local Binance archive mirror.

A mirror of Binance's public kline archive (``tests/archive_mirror.py``: the same price path as the
simulated exchange; monthly files without a header row, daily files with one) is served over HTTP
on loopback; the candles of the 30 closed days before today are loaded from it through Dagster,
as ``POST /backfill/start`` would load them (runs of many partitions, straight into the run queue),
with the archive URL given to those runs as resource configuration. It prints how long it took,
what came from where, and where the UI shows the partitions materialized.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence

from dm_resources.contracts import AUDIT_RESULTS_PATH, CANDLE_ASSET_PATHS, HEALTH_SCORES_PATH
from dm_resources.dagster_client import DagsterGraphQL
from dm_resources.embedded import ROOT
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore

DAYS = 30


def load_history(
    gql: DagsterGraphQL,
    store: MongoStore,
    meta: MetadataStore,
    symbols: Sequence[str],
    say: Callable[[str], None],
    *,
    days: int = DAYS,
    per_run: int = 200,
) -> float:
    """Load ``days`` closed days × ``symbols`` from a local archive mirror through Dagster; returns the seconds."""
    sys.path.insert(0, str(ROOT))
    from api.backfills import ASSET_JOB, plan_runs, symbol_order
    from dm_resources.candle_store import CandleStore
    from dm_resources.metadata.archive import archive_files
    from tests.archive_mirror import ArchiveMirror

    gql = DagsterGraphQL(gql.url, timeout=600)  # creating a run of many partitions takes a while on SQLite
    today = dt.datetime.now(dt.UTC).date()
    window = [(today - dt.timedelta(days=i)).isoformat() for i in range(days, 0, -1)]
    say("-" * 70)
    say(f"history: {days} days × {len(symbols)} symbols ({window[0]} .. {window[-1]}) from a local archive mirror")
    with ArchiveMirror(symbols=list(symbols)) as mirror:
        say(f"  Binance archive mirror on {mirror.url} (monthly files without a header row, daily files with one)")
        plans = plan_runs(window, list(symbols), symbol_order(gql), per_run)
        assets = [list(p) for p in (*CANDLE_ASSET_PATHS, AUDIT_RESULTS_PATH, HEALTH_SCORES_PATH)]
        run_config = {"resources": {"binance": {"config": {"archive_url": mirror.url}}}}
        t0 = time.perf_counter()
        run_ids = [
            gql.launch_run(
                ASSET_JOB,
                asset_selection=assets,
                run_config=run_config,
                tags={"dm/origin": "api", "dm/backfill": "demo-history", **p.tags()},
            )
            for p in plans
        ]
        say(
            f"  {len(run_ids)} run(s) of {', '.join(str(p.partitions) for p in plans)} partitions launched; waiting ..."
        )
        statuses = [gql.wait_for_run(r, timeout=1800, poll=1.0) for r in run_ids]
        seconds = time.perf_counter() - t0
    n = len(window) * len(symbols)
    say(f"history loaded in {seconds:.1f} s: {n} partitions ({seconds / n:.2f} s each), runs {statuses}")
    lo = int(dt.datetime.fromisoformat(window[0]).replace(tzinfo=dt.UTC).timestamp() * 1000)
    hi = int(dt.datetime.fromisoformat(window[-1]).replace(tzinfo=dt.UTC).timestamp() * 1000) + 86_400_000
    for s in symbols:
        frame = CandleStore(store).read_frame(s, "1m", lo, hi)
        by_source = frame["source"].value_counts().to_dict() if not frame.empty else {}
        hours = CandleStore(store).count(s, "1h", lo, hi)
        say(f"  {s}: {len(frame)} 1m candles by source {by_source}, {hours} 1h candles")
    recorded = archive_files(meta, start_ms=lo, end_ms=hi)
    accepted = [r for r in recorded if r.status == "accepted"]
    for r in accepted[:4]:
        say(f"  provenance: {r.name} sha256 {r.sha256[:16] if r.sha256 else '?'}… rows {r.rows} fetched {r.fetched_at}")
    if len(accepted) > 4:
        say(f"  … {len(accepted) - 4} more archive files in archive_files")
    rows = meta.health(day_from=dt.date.fromisoformat(window[0]), day_to=dt.date.fromisoformat(window[-1]))
    worst = min((h.score for h in rows), default=None)
    say(f"  {len(rows)} health rows for the window (symbol × interval × day); lowest score {worst}")
    say("  UI: Assets → candles → candles_1m → Partitions: these days × symbols show materialized")
    return seconds
