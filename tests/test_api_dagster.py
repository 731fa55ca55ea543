"""Backfills through a real Dagster (``dagster dev``: webserver + daemon, runs queued by our coordinator).

* ``POST /backfill/start`` launches runs of many partitions straight into the run queue (no backfill
  daemon), ``GET /backfill/jobs/{id}`` follows them to the end, and the partitions are stored.
* The UI's "Materialize…" dialog: the exact GraphQL mutation it sends for a date range × all
  symbols (``LaunchAssetChoosePartitionsDialog.tsx`` in Dagster 1.13) runs to completion through
  the backfill daemon, and every run it launched carries its ``dm/symbol`` tag.

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
from dagster import AssetKey, DagsterInstance

from api.app import create_app
from api.models import BackfillJobView, BackfillStarted, Readiness
from api.testing import serve
from dm_resources.candle_store import CandleStore
from dm_resources.contracts import BACKFILL_ASSET_PATHS, CANDLE_ASSET_PATHS
from dm_resources.dagster_client import DagsterAPIError, DagsterGraphQL
from dm_resources.embedded import free_port, start_dagster_dev
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.run_coordinator import SYMBOL_TAG, instance_yaml, lock_key, range_label
from dm_resources.settings import load_settings
from tests.fake_exchange import FakeExchange

TOKEN = "dagster-test-token"
RUNS_TIMEOUT_S = 300
SYMBOLS = ["BTCUSDT", "ETHUSDT"]

# What the dialog sends (Dagster 1.13, ui-core LaunchAssetChoosePartitionsDialog.tsx, onLaunchAsBackfill,
# asset target): the mutation document of BackfillUtils.tsx and these backfillParams.
UI_LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConflict { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on RunConfigValidationInvalid { pipelineName errors { message path reason } }
    ... on PythonError { message stack }
  }
}
"""

RUN_TAGS = """
query($ids: [String!]) { runsOrError(filter: {runIds: $ids}) { ... on Runs { results { runId status
  tags { key value } } } } }
"""


def _tags(gql: DagsterGraphQL, run_ids: list[str]) -> dict[str, dict[str, str]]:
    runs = gql.call(RUN_TAGS, {"ids": run_ids})["runsOrError"]["results"]
    return {r["runId"]: {t["key"]: t["value"] for t in r["tags"]} for r in runs}


def _days(n: int, back: int) -> list[str]:
    last = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=back)
    return [(last - dt.timedelta(days=i)).isoformat() for i in range(n)][::-1]


@pytest.mark.slow
def test_api_runs_and_the_ui_backfill_dialog_materialize_date_ranges_of_every_symbol(
    mongo_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    db = f"api_dg_{uuid.uuid4().hex[:8]}"
    store = MongoStore(mongo_server.url, db, retry_attempts=2)
    store.ensure_indexes()
    meta_url = f"sqlite:///{tmp_path / 'metadata.db'}"
    meta = MetadataStore(meta_url)
    meta.migrate()
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml())  # SQLite storage, runs queued by our coordinator
    port = free_port()
    with FakeExchange(symbols=SYMBOLS) as exchange:
        env = {
            "DM_MONGO_URL": mongo_server.url,
            "DM_MONGO_DB": db,
            "DM_METADATA_URL": meta_url,
            "DM_BINANCE_REST_URL": exchange.url,
            "DM_SYMBOLS": ",".join(SYMBOLS),
            "DM_AUTOMATION": "false",
        }
        dagster = start_dagster_dev(port, str(home), env, log_dir=tmp_path, timeout=240)
        try:
            gql = DagsterGraphQL(f"http://127.0.0.1:{port}/graphql", timeout=60)
            settings = load_settings(
                mongo_url=mongo_server.url,
                mongo_db=db,
                metadata_url=meta_url,
                symbols=SYMBOLS,
                api_token=TOKEN,
                dagster_graphql_url=gql.url,
                backfill_partitions_per_run=2,  # 2 days × 2 symbols → a run per symbol, launched in parallel
            )
            app = create_app(settings, mongo=store, meta=meta)
            api_days = _days(2, back=1)
            body = {
                "pairs": ["btcusdt", "ETHUSDT"],
                "start": f"{api_days[0]}T00:00:00Z",
                "end": f"{api_days[-1]}T23:59:00Z",
            }
            auth = {"Authorization": f"Bearer {TOKEN}"}
            with serve(app) as base, httpx.Client(base_url=base, timeout=60) as http:
                ready = Readiness.model_validate(http.get("/health/readiness").json())
                assert (ready.status, ready.state, ready.down) == ("healthy", "ready", [])
                assert http.post("/backfill/start", json=body).status_code == 401
                for bad, field in (
                    ({**body, "pairs": ["NOPEUSDT"]}, "pairs"),  # unknown symbol: 4xx naming the field
                    ({**body, "start": body["end"], "end": body["start"]}, "start"),  # inverted dates
                ):
                    resp = http.post("/backfill/start", json=bad, headers=auth)
                    assert resp.status_code == 422 and field in resp.text, resp.text
                assert not http.get("/backfill/jobs").json()["jobs"]  # nothing launched, nothing recorded

                t0 = time.monotonic()
                resp = http.post("/backfill/start", json=body, headers=auth)
                assert resp.status_code == 202, resp.text
                started = BackfillStarted.model_validate(resp.json())
                want = [f"{d}|{s}" for d in api_days for s in SYMBOLS]
                assert sorted(started.partitions) == sorted(want) and started.id.startswith("runs:")
                assert len(started.runs) == 2  # at most 2 partitions per run: one run per symbol
                row = meta.get_backfill_job(started.id)
                assert row is not None and row.origin == "api" and row.dagster_run_ids == started.runs
                view = None
                while time.monotonic() - t0 < RUNS_TIMEOUT_S:
                    view = BackfillJobView.model_validate(http.get(f"/backfill/jobs/{started.id}").json())
                    if view.status in ("success", "failure", "partial", "canceled"):
                        break
                    time.sleep(1)
                assert view is not None and view.status == "success", f"{view}\n{dagster.tail(60)}"
                assert view.source == "dagster" and sorted(r.run_id for r in view.live.runs) == sorted(started.runs)  # type: ignore[union-attr]
                run_tags = _tags(gql, started.runs)
                ranges = sorted(
                    (t[SYMBOL_TAG], t["dagster/asset_partition_range_start"], t["dagster/asset_partition_range_end"])
                    for t in run_tags.values()
                )
                assert ranges == [
                    (s, f"{api_days[0]}|{s}", f"{api_days[-1]}|{s}") for s in SYMBOLS
                ]  # one symbol per run, tagged with it (the per-symbol run limit applies)
                assert all(t[lock_key(t[SYMBOL_TAG])] == "1" for t in run_tags.values())  # and holding its lock
                assert all(t["dm/backfill"] == started.id for t in run_tags.values())
                stored = meta.get_backfill_job(started.id)
                assert stored is not None and stored.status == "success"

            # The UI's "Materialize…" dialog: a date range × all symbols, as the dialog sends it.
            ui_days = _days(2, back=3)
            keys = [f"{d}|{s}" for d in ui_days for s in SYMBOLS]
            params = {
                "tags": [{"key": "dagster/from_ui", "value": "true"}],
                "assetSelection": [{"path": list(p)} for p in BACKFILL_ASSET_PATHS],
                "partitionNames": keys,
                "fromFailure": False,
            }
            result = gql.call(UI_LAUNCH_PARTITION_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
            assert "backfillId" in result, result
            state = gql.wait_for_backfill(result["backfillId"], timeout=RUNS_TIMEOUT_S, poll=2)
            assert state.status == "COMPLETED_SUCCESS", f"{state}\n{dagster.tail(60)}"
            assert state.runs and all(r["status"] == "SUCCESS" for r in state.runs), state.runs
            ui_tags = _tags(gql, [r["runId"] for r in state.runs])
            # Tagged by the run queue: a run of one symbol with it, a run over both (a 2 × 2 range) with
            # the range; either holds the lock of every symbol it writes.
            for t in ui_tags.values():
                lo, hi = (t[f"dagster/asset_partition_range_{end}"].split("|")[1] for end in ("start", "end"))
                assert t[SYMBOL_TAG] == (lo if lo == hi else range_label(lo, hi))
                assert {k for k in t if k.startswith("dm/lock.")} == {lock_key(lo), lock_key(hi)}

            with DagsterInstance.from_config(str(home)) as inst:
                for path in (*CANDLE_ASSET_PATHS, ("quality", "health_scores")):
                    done = inst.get_materialized_partitions(AssetKey(list(path)))
                    assert set(want) | set(keys) <= {str(k) for k in done}, path
            for d in [*api_days, *ui_days]:
                lo = int(dt.datetime.fromisoformat(d).replace(tzinfo=dt.UTC).timestamp() * 1000)
                for s in SYMBOLS:
                    assert CandleStore(store).count(s, "1m", lo, lo + 86_400_000) == 1440, (d, s)
                    assert CandleStore(store).count(s, "1h", lo, lo + 86_400_000) == 24, (d, s)

            # Runs go through dagster-graphql's client: a job run launched and followed to its end,
            # and an unknown job refused with Dagster's reason.
            run_id = gql.launch_run("catalog_job", tags={"dm/origin": "test"})
            assert gql.wait_for_run(run_id, timeout=RUNS_TIMEOUT_S, poll=2) == "SUCCESS", dagster.tail(40)
            with pytest.raises(DagsterAPIError, match="no_such_job"):
                gql.launch_run("no_such_job")
        finally:
            dagster.stop(signal.SIGINT, timeout=60)
            store.client.drop_database(db)
            store.close()
            meta.close()
