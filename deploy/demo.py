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
6. integrity: publishes one bad print (a websocket kline whose high is 1.8× the price) through
   NATS and the ingest service, runs today's candles for that symbol — the blocking check
   fails, downstream is skipped, the health drops and says why, the API serves the candle
   with its flags — then lets the gap sensor's repair run re-fetch the minute from REST;
7. prints where everything is, and keeps running until Ctrl-C (``--exit`` stops at once).

The generated session and the simulated exchange follow one price path
(``ingest_service.pricepath``), so the websocket klines and the REST fills agree.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from typing import Any

from deploy.demo_history import load_history
from deploy.demo_orderbook import orderbook_demo
from deploy.demo_patterns import show_similarity
from deploy.demo_platform import show_platform
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import AUDIT_RESULTS_PATH, CANDLE_ASSET_PATHS, HEALTH_SCORES_PATH
from dm_resources.dagster_client import LOCATION, REPOSITORY, DagsterGraphQL
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
from dm_resources.mongo import RAW_COLLECTIONS, MongoStore
from dm_resources.settings import load_settings
from ingest_service.progress import drain_budget_s, read_progress, wait_drained

VAR = ROOT / "var"
warnings.filterwarnings("ignore", message=".*currently in beta.*")
CANDLE_AND_QUALITY = [list(p) for p in (*CANDLE_ASSET_PATHS, AUDIT_RESULTS_PATH, HEALTH_SCORES_PATH)]


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


RUNS_BY_TAGS = """
query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}, limit: 20) { __typename
  ... on Runs { results { runId status startTime tags { key value } } } } }
"""


SCHEDULE_STATE = """
query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) { __typename
  ... on Schedule { id scheduleState { status } } } }
"""
STOP_SCHEDULE = """
mutation($id: String) { stopRunningSchedule(id: $id) { __typename } }
"""
START_SCHEDULE = """
mutation($selector: ScheduleSelector!) { startSchedule(scheduleSelector: $selector) { __typename } }
"""
ACTIVE_RUNS = """
query($job: String) { runsOrError(filter: {pipelineName: $job, statuses: [QUEUED, NOT_STARTED, STARTING, STARTED]}) {
  __typename ... on Runs { results { runId } } } }
"""


@contextlib.contextmanager
def _schedule_paused(gql: DagsterGraphQL, name: str, job: str) -> Iterator[None]:
    """Schedule ``name`` stopped for the block (its ``job``'s runs finished first), then running again as before.

    The integrity story shows one fault's whole life: the run that detects it, the health and the
    flagged candle in between, the repair. The audit schedule refreshes today every 5 minutes; a
    tick during the story would detect or repair the fault in a run of its own and skip a chapter.
    """
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": name}
    found = gql.call(SCHEDULE_STATE, {"selector": selector})["scheduleOrError"]
    running = found.get("__typename") == "Schedule" and found["scheduleState"]["status"] == "RUNNING"
    if running:
        gql.call(STOP_SCHEDULE, {"id": found["id"]})

        def idle() -> bool:
            return not gql.call(ACTIVE_RUNS, {"job": job})["runsOrError"].get("results")

        wait_until(idle, 600, f"{job}'s in-flight runs to finish")
    try:
        yield
    finally:
        if running:
            gql.call(START_SCHEDULE, {"selector": selector})


def _bad_kline_envelope(exchange: Any, symbol: str, minute: int, factor: str = "1.8") -> dict[str, Any]:
    """The exchange's own kline for ``minute`` with its high × ``factor``: a websocket bad print."""
    from decimal import Decimal

    (row,) = exchange.klines(symbol, "1m", minute, minute + 60_000, include_open=True, now_ms=minute + 60_000)
    high = (Decimal(row[2]) * Decimal(factor)).quantize(Decimal("0.01"))
    k = {"t": minute, "T": minute + 59_999, "s": symbol, "i": "1m", "f": 1, "L": 2, "o": row[1], "c": row[4]}
    k |= {"h": str(high), "l": row[3], "v": row[5], "n": row[8], "x": True, "q": row[7], "V": row[9], "Q": row[10]}
    return {"stream": f"{symbol.lower()}@kline_1m", "data": {"e": "kline", "E": minute + 60_000, "s": symbol, "k": k}}


def _show_state(store: MongoStore, meta: MetadataStore, symbol: str, today: str, minute: int, api: str | None) -> None:
    day = dt.date.fromisoformat(today)
    for h in meta.health(symbol=symbol, interval="1m", day_from=day, day_to=day):
        why = (h.details or {}).get("failed_checks") or "nothing failed"
        say(f"  health {symbol} 1m {h.day}: score {h.score} (consistency {h.consistency:.2f}); why: {why}")
    (c,) = CandleStore(store).read_range(symbol, "1m", minute, minute + 60_000)
    say(
        f"  stored candle {c['open_time']}: high {c['high']:,.2f} close {c['close']:,.2f} source {c['source']} "
        f"flags {c.get('flags')}"
    )
    if api:
        path = f"/data/candles?pair={symbol}&period=1m&start={minute}&limit=1"
        code, body = _get(api + path)
        rows = json.loads(body).get("rows", []) if code == 200 else []
        served = (
            f"high {rows[0]['high']:,.2f} close {rows[0]['close']:,.2f} source {rows[0].get('source')} "
            f"flags {rows[0].get('flags')}"
            if rows
            else body[:260]
        )
        say(f"  GET {path} -> {code}: {served}")


def _show_audit(meta: MetadataStore, symbol: str, *, failing: bool) -> None:
    """The audit trail of the bad print: detection and repair events (and the failing check rows)."""
    rows = meta.audit_logs(symbol=symbol, check_name="no_bad_prints", limit=100)
    shown = [r for r in rows if (r.details or {}).get("event") or (failing and not r.passed)]
    for r in reversed(shown[:4]):
        say(f"  audit_logs: {r.severity} passed={r.passed} {r.message}")


def _integrity_demo(
    gql: DagsterGraphQL,
    store: MongoStore,
    meta: MetadataStore,
    exchange: Any,
    symbol: str,
    today: str,
    api_port: int | None,
) -> None:
    """One bad print through the real path: caught by the blocking check, scored, served flagged, repaired."""
    say("-" * 70)
    with _schedule_paused(gql, "audit_schedule", "audit_job"):
        _bad_print_story(gql, store, meta, exchange, symbol, today, api_port)
    say("-" * 70)


def _bad_print_story(
    gql: DagsterGraphQL,
    store: MongoStore,
    meta: MetadataStore,
    exchange: Any,
    symbol: str,
    today: str,
    api_port: int | None,
) -> None:
    say(f"integrity: publishing one bad print for {symbol} through NATS (a websocket kline with a 1.8× high) ...")
    # The minute now open: nothing can have filled it from REST yet (the open candle is never stored),
    # so the websocket kline is what every later run finds for it.
    now = int(time.time() * 1000)
    minute = now - now % 60_000
    path = VAR / "demo" / "bad_print.jsonl"
    path.write_bytes(json.dumps(_bad_kline_envelope(exchange, symbol, minute)).encode() + b"\n")
    subprocess.run([sys.executable, "-m", "ingest_service.replay", str(path), "--no-progress"], check=True)
    wait_until(
        lambda: bool(store.read_range("klines", symbol, minute, minute + 60_000, extra={"interval": "1m"})),
        60,
        "the bad kline stored by the ingest service",
    )
    say("  waiting for that minute to close ...")
    while time.time() * 1000 < minute + 62_000:  # the minute must be closed to be built
        time.sleep(0.5)
    pk = f"{today}|{symbol}"
    api = f"http://127.0.0.1:{api_port}" if api_port else None
    bf = gql.launch_backfill(CANDLE_AND_QUALITY, [pk], tags={"dm/origin": "api"}, title="demo: audit after a bad print")
    state = gql.wait_for_backfill(bf, timeout=600, poll=2.0)
    statuses = [r.get("status") for r in state.runs]
    why = (
        "a blocking check failed: the derived candles and quality steps were skipped"
        if "FAILURE" in statuses
        else "no blocking check failed"
    )
    say(f"candles run for {pk}: {statuses} ({why})")
    _show_audit(meta, symbol, failing=True)
    _show_state(store, meta, symbol, today, minute, api)

    say("waiting for the gap sensor to request the repair run (it looks every 2 minutes) ...")
    started = time.time()
    run_id = None

    def repaired() -> bool:
        rows = CandleStore(store).read_range(symbol, "1m", minute, minute + 60_000)
        return bool(rows) and not rows[0].get("flags")

    while time.time() - started < 240 and run_id is None and not repaired():
        tags = [{"key": "dagster/partition", "value": pk}, {"key": "dm/origin", "value": "sensor"}]
        res = gql.call(RUNS_BY_TAGS, {"tags": tags})["runsOrError"]
        fresh = [r for r in res.get("results", []) if (r.get("startTime") or time.time()) >= started - 5]
        run_id = fresh[0]["runId"] if fresh else None
        if run_id is None:
            time.sleep(3)
    if run_id is not None:
        say(f"gap sensor requested run {run_id[:8]}: {gql.wait_for_run(run_id, timeout=600, poll=2.0)}")
    elif repaired():
        say("  repaired meanwhile by another run of the partition")
    else:
        say("  the sensor has not ticked yet; launching the same repair run it would request")
        bf = gql.launch_backfill(CANDLE_AND_QUALITY, [pk], tags={"dm/origin": "sensor"}, title="demo: repair run")
        state = gql.wait_for_backfill(bf, timeout=600, poll=2.0)
        say(f"repair run: {[r.get('status') for r in state.runs]}")
    _show_audit(meta, symbol, failing=False)
    _show_state(store, meta, symbol, today, minute, api)


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
                "--path",
                "market",  # the simulated exchange's price path: one story where the sources meet
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
        raw = [*RAW_COLLECTIONS, "dead_letters"]
        counts = store.counts(raw)
        say("stored per raw collection: " + json.dumps({k: counts.get(k, 0) for k in raw}))

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
            rows = CandleStore(store).read_range(s, "1m", day_start, None, projection={"source": 1, "close": 1})
            sources: dict[str, list[float]] = {}
            for r in rows:
                sources.setdefault(r["source"], []).append(float(r["close"]))
            ranges = ", ".join(f"{k} {len(v)} (close {min(v):,.2f}–{max(v):,.2f})" for k, v in sources.items())
            say(f"  {s}: {len(rows)} 1m candles today, by source: {ranges}")
        for h in meta.latest_health_by_symbol().values():
            say(f"  health {h.symbol} {h.interval} {h.day}: score {h.score}")
        load_history(gql, store, meta, settings.symbols, say)

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
            show_similarity(gql, base, settings.symbols, say)

        if exchange is not None:
            _integrity_demo(gql, store, meta, exchange, settings.symbols[0], today, api_port)
            orderbook_demo(gql, store, meta, exchange, settings, env, start_ms + int(args.minutes * 60_000), api_port)
        show_platform(settings)

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
