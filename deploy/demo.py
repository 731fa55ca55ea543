"""``make demo``: the whole stack on embedded defaults, fed with a generated session, shown working.

1. starts what is not already running (NATS with JetStream, SecantusDB as MongoDB),
   migrates the metadata store (SQLite under var/);
2. starts a simulated Binance REST exchange on loopback unless DM_BINANCE_REST_URL is set
   (the real one is not reachable from here), for gap fills;
3. starts the ingest service, generates a session (all six event types, a few malformed
   messages) ending now, replays it onto NATS and waits until it is stored;
4. starts Dagster (webserver + daemon), launches a backfill of today's partitions through
   GraphQL (candles → checks → audit → health), then analytics and the catalog;
5. starts the API and calls a few routes;
6. prints where everything is, and keeps running until Ctrl-C (``--exit`` stops at once).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings

from dm_resources.candle_store import CandleStore
from dm_resources.dagster_client import DagsterGraphQL
from dm_resources.embedded import (
    ROOT,
    EmbeddedStack,
    ManagedProcess,
    free_port,
    is_listening,
    start_api,
    start_dagster_dev,
    wait_until,
)
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import COLLECTIONS, MongoStore
from dm_resources.settings import load_settings
from ingest_service.progress import drain_budget_s, read_progress, wait_drained

VAR = ROOT / "var"
warnings.filterwarnings("ignore", message=".*currently in beta.*")
CANDLE_AND_QUALITY = [["candles", f"candles_{iv}"] for iv in ("1m", "5m", "15m", "1h", "4h", "1d")] + [
    ["quality", "audit_results"],
    ["quality", "health_scores"],
]


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _port(preferred: int) -> int:
    return preferred if not is_listening("127.0.0.1", preferred) else free_port()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:  # loopback URLs we built
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening (yet)
        return 0, str(exc)


def _wait_ingested(nats_url: str, stream: str, durable: str, published: int) -> None:
    """Until the ingest service acked everything in the stream (read on the bus, not by counting the store)."""
    now = read_progress(nats_url, stream, durable)
    last_seq = now.stream_last_seq if now else 0
    wait_drained(nats_url, stream, durable, min_last_seq=last_seq, timeout=drain_budget_s(published))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20, help="length of the generated session")
    ap.add_argument("--exit", action="store_true", help="stop everything after showing it works")
    args = ap.parse_args(argv)

    settings = load_settings()
    started: list[ManagedProcess] = []
    exchange = None
    stack = EmbeddedStack(settings, VAR)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    try:
        say("starting the embedded stack (only what is not already running) ...")
        stack.up()
        for line in stack.describe().splitlines():
            say("  " + line)
        env = dict(stack.env)
        env["DM_SYMBOLS"] = ",".join(settings.symbols)

        meta = MetadataStore(settings.metadata_url)
        meta.migrate()
        store = MongoStore(settings.mongo_url, settings.mongo_db)
        store.ensure_indexes()

        if "DM_BINANCE_REST_URL" not in os.environ:
            sys.path.insert(0, str(ROOT))
            from tests.fake_exchange import FakeExchange

            exchange = FakeExchange(symbols=settings.symbols).start()
            env["DM_BINANCE_REST_URL"] = exchange.url
            say(f"Binance REST: simulated exchange on {exchange.url} (set DM_BINANCE_REST_URL for the real one)")
        else:
            env["DM_BINANCE_REST_URL"] = settings.binance_rest_url

        # -- ingest ----------------------------------------------------------------------
        metrics_port = _port(9108)
        ingest_env = {**os.environ, **env, "DM_INGEST_METRICS_PORT": str(metrics_port), "DM_INGEST_LOG_JSON": "true"}
        ingest = ManagedProcess(
            "ingest", [sys.executable, "-m", "ingest_service"], VAR / "logs" / "ingest.log", env=ingest_env
        ).start()
        started.append(ingest)
        wait_until(
            lambda: _get(f"http://127.0.0.1:{metrics_port}/health/readiness")[0] == 200,
            60,
            "ingest service readiness",
            ingest,
        )
        say(f"ingest service up: metrics http://127.0.0.1:{metrics_port}/metrics")

        now = int(time.time() * 1000)
        start_ms = now - now % 60_000 - int(args.minutes * 60_000)
        session = VAR / "demo" / "session.jsonl"
        session.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ingest_service.generator",
                str(session),
                "--symbols",
                ",".join(settings.symbols),
                "--minutes",
                str(args.minutes),
                "--start-ms",
                str(start_ms),
                "--bad",
                "25",
            ],
            check=True,
            env={**os.environ, **env},
        )
        lines = sum(1 for _ in session.open())
        say(f"generated {lines} messages ({args.minutes:g} min, {len(settings.symbols)} symbols, 25 malformed)")
        subprocess.run(
            [sys.executable, "-m", "ingest_service.replay", str(session), "--no-progress"],
            check=True,
            env={**os.environ, **env},
        )
        _wait_ingested(env.get("DM_NATS_URL", settings.nats_url), settings.nats_stream, settings.nats_durable, lines)
        counts = store.counts(COLLECTIONS)
        say("stored per collection: " + json.dumps({k: counts.get(k, 0) for k in COLLECTIONS}))

        # -- Dagster -----------------------------------------------------------------------
        dagster_port = _port(3000)
        say("starting Dagster (webserver + daemon) ...")
        dagster = start_dagster_dev(dagster_port, env["DAGSTER_HOME"], env, log_dir=VAR / "logs")
        started.append(dagster)
        from dagster import DagsterInstance

        with DagsterInstance.from_config(env["DAGSTER_HOME"]) as inst:
            known = set(inst.get_dynamic_partitions("symbols"))
            new = [s for s in settings.symbols if s not in known]
            if new:
                inst.add_dynamic_partitions("symbols", new)
        gql = DagsterGraphQL(f"http://127.0.0.1:{dagster_port}/graphql")
        today = dt.datetime.now(dt.UTC).date().isoformat()
        partitions = [f"{today}|{s}" for s in settings.symbols]
        backfill_id = gql.launch_backfill(
            CANDLE_AND_QUALITY, partitions, tags={"dm/origin": "api"}, title="demo: today's candles"
        )
        say(f"backfill {backfill_id} launched for {partitions}; waiting ...")
        state = gql.wait_for_backfill(backfill_id, timeout=900, poll=2.0)
        say(f"backfill {state.status}: {len(state.runs)} run(s)")
        day_start = int(dt.datetime.fromisoformat(today).replace(tzinfo=dt.UTC).timestamp() * 1000)
        for s in settings.symbols:
            rows = CandleStore(store).read_range(s, "1m", day_start, None, projection={"source": 1})
            sources: dict[str, int] = {}
            for r in rows:
                sources[r["source"]] = sources.get(r["source"], 0) + 1
            say(f"  {s}: {len(rows)} 1m candles today, by source {sources}")
        for h in meta.latest_health_by_symbol().values():
            say(f"  health {h.symbol} {h.interval} {h.day}: score {h.score}")

        # -- analytics and catalog (what their schedules do every 15 / 10 minutes) -----------
        from dm_assets.analytics.assets import SYMBOL_KEYS, analytics_key
        from dm_assets.analytics.assets import run_config as analytics_config

        as_of = int(time.time() * 1000)
        runs = [
            gql.launch_run(
                "analytics_job",
                asset_selection=[k.path for k in SYMBOL_KEYS],
                partition_key=s,
                run_config=analytics_config(as_of, correlation=False).to_config_dict(),
                tags={"dm/origin": "api"},
            )
            for s in settings.symbols
        ]
        for run_id in runs:
            say(f"analytics run {run_id[:8]}: {gql.wait_for_run(run_id, timeout=600)}")
        corr = gql.launch_run(
            "analytics_job",
            asset_selection=[analytics_key("correlation").path],
            run_config=analytics_config(as_of, symbol_assets=False).to_config_dict(),
            tags={"dm/origin": "api"},
        )
        say(f"correlation run {corr[:8]}: {gql.wait_for_run(corr, timeout=600)}")
        cat = gql.launch_run("catalog_job", tags={"dm/origin": "api"})
        say(f"catalog run {cat[:8]}: {gql.wait_for_run(cat, timeout=600)}")
        say(
            f"analytics documents: {store.count('analytics')}; catalog datasets: {len(meta.list_datasets())}; "
            f"lineage edges: {len(meta.lineage())}"
        )

        # -- API ---------------------------------------------------------------------------
        api_port = None
        if importlib.util.find_spec("api.app") is not None:
            api_port = _port(8000)
            api_env = {**env, "DM_DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{dagster_port}/graphql"}
            started.append(start_api(api_port, api_env, log_dir=VAR / "logs"))
            base = f"http://127.0.0.1:{api_port}"
            sym = settings.symbols[0]
            for path in (
                "/health/readiness",
                f"/data/candles?pair={sym}&period=1m&limit=3",
                f"/data/candles?pair={sym}&period=1h&limit=2",
                "/health/summary",
                "/catalog/datasets",
            ):
                code, body = _get(base + path)
                say(f"GET {path} -> {code}: {body[:300]}")

        say("=" * 70)
        say(f"Dagster UI     http://127.0.0.1:{dagster_port}  (Assets → lineage, candles partitions date × symbol)")
        if api_port:
            say(f"API docs       http://127.0.0.1:{api_port}/docs")
        say(f"Ingest metrics http://127.0.0.1:{metrics_port}/metrics")
        say(f"Logs           {VAR / 'logs'}")
        if args.exit:
            return 0
        say("running; Ctrl-C stops everything the demo started")
        while not stop["flag"]:
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping ...")
        for proc in reversed(started):
            proc.stop(signal.SIGINT if proc.name == "dagster-dev" else signal.SIGTERM, timeout=30)
        if exchange is not None:
            exchange.stop()
        stack.down()


if __name__ == "__main__":
    raise SystemExit(main())
