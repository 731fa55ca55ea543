"""``POST /backfill/start`` launches a real Dagster backfill (``dagster dev``: webserver + daemon) and
``GET /backfill/jobs/{id}`` reports it live from Dagster, with at least one run.

Slow by nature (Dagster start-up and the daemon's backfill tick): one test, everything in it.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from api.models import BackfillJobView, BackfillStarted, Readiness
from api.testing import serve
from dm_resources.dagster_client import DagsterAPIError, DagsterGraphQL
from dm_resources.embedded import free_port, start_dagster_dev
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import load_settings
from tests.fake_exchange import FakeExchange

TOKEN = "dagster-test-token"
RUNS_TIMEOUT_S = 240


@pytest.mark.slow
def test_backfill_route_starts_a_real_dagster_run(mongo_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = f"api_dg_{uuid.uuid4().hex[:8]}"
    store = MongoStore(mongo_server.url, db, retry_attempts=2)
    store.ensure_indexes()
    meta_url = f"sqlite:///{tmp_path / 'metadata.db'}"
    meta = MetadataStore(meta_url)
    meta.migrate()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").touch()  # SQLite instance storage, never the repository's Postgres config
    port = free_port()
    with FakeExchange(symbols=["BTCUSDT"]) as exchange:
        env = {
            "DM_MONGO_URL": mongo_server.url,
            "DM_MONGO_DB": db,
            "DM_METADATA_URL": meta_url,
            "DM_BINANCE_REST_URL": exchange.url,
            "DM_SYMBOLS": "BTCUSDT",
            "DM_AUTOMATION": "false",
        }
        dagster = start_dagster_dev(port, str(home), env, log_dir=tmp_path, timeout=240)
        try:
            settings = load_settings(
                mongo_url=mongo_server.url,
                mongo_db=db,
                metadata_url=meta_url,
                symbols=["BTCUSDT"],
                api_token=TOKEN,
                dagster_graphql_url=f"http://127.0.0.1:{port}/graphql",
            )
            app = create_app(settings, mongo=store, meta=meta)
            yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
            body = {
                "pairs": ["btcusdt"],
                "period": "1m",
                "start": f"{yesterday}T00:00:00Z",
                "end": f"{yesterday}T02:00:00Z",
            }
            with serve(app) as base, httpx.Client(base_url=base, timeout=60) as http:
                ready = Readiness.model_validate(http.get("/health/readiness").json())
                assert (ready.status, ready.state, ready.down) == ("healthy", "ready", [])

                refused = http.post("/backfill/start", json=body)
                assert refused.status_code == 401
                assert not http.get("/backfill/jobs").json()["jobs"]  # nothing launched, nothing recorded

                resp = http.post("/backfill/start", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
                assert resp.status_code == 202, resp.text
                started = BackfillStarted.model_validate(resp.json())
                assert started.partitions == [f"{yesterday}|BTCUSDT"]
                row = meta.get_backfill_job(started.id)
                assert row is not None and (row.origin, row.dagster_backfill_id) == ("api", started.id)
                assert row.partition_keys == [f"{yesterday}|BTCUSDT"] and row.symbols == ["BTCUSDT"]

                deadline = time.monotonic() + RUNS_TIMEOUT_S
                view = None
                while time.monotonic() < deadline:
                    view = BackfillJobView.model_validate(http.get(f"/backfill/jobs/{started.id}").json())
                    if view.live is not None and view.live.runs:
                        break
                    time.sleep(2)
                assert view is not None and view.source == "dagster", view
                assert view.live is not None and view.live.backfill_id == started.id
                assert view.live.runs, f"no run launched within {RUNS_TIMEOUT_S}s:\n{dagster.tail(40)}"
                assert view.status in ("running", "success", "failure", "partial")

            # Runs go through dagster-graphql's client: a job run launched and followed to its end,
            # and an unknown job refused with Dagster's reason.
            gql = DagsterGraphQL(f"http://127.0.0.1:{port}/graphql", timeout=60)
            run_id = gql.launch_run("catalog_job", tags={"dm/origin": "test"})
            assert gql.wait_for_run(run_id, timeout=RUNS_TIMEOUT_S, poll=2) == "SUCCESS", dagster.tail(40)
            with pytest.raises(DagsterAPIError, match="no_such_job"):
                gql.launch_run("no_such_job")
        finally:
            dagster.stop(signal.SIGINT, timeout=60)
            store.client.drop_database(db)
            store.close()
            meta.close()
