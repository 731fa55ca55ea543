"""``/backfill/*``: start Dagster partition backfills (token required) and report their status."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Annotated

import requests
from fastapi import APIRouter, Depends, Path, Query

from api.backfills import (
    BACKFILL_ASSETS,
    BACKFILL_TAG,
    backfill_status,
    ensure_symbol_partitions,
    group_runs,
    launch_runs,
    plan_partitions,
    plan_runs,
    run_group_status,
    run_status,
    symbol_order,
)
from api.deps import AppState, State, read_access, require_write_token
from api.errors import UpstreamError
from api.json_body import BodyRoute
from api.models import (
    BackfillJobList,
    BackfillJobRecord,
    BackfillJobView,
    BackfillRequest,
    BackfillStarted,
    DagsterBackfillView,
    DagsterRun,
    ErrorResponse,
)
from api.params import CANDLE_PERIODS, ParamError, check_period, normalise_pair, parse_time
from dm_resources.dagster_client import DagsterAPIError
from dm_resources.metadata.schemas import ACTIVE_BACKFILL_STATUSES

log = logging.getLogger(__name__)
router = APIRouter(route_class=BodyRoute, prefix="/backfill", tags=["backfill"])

STATUSES = ("queued", "requested", "running", "success", "failure", "canceled", "partial")


def _pairs(req: BackfillRequest, st: AppState) -> list[str]:
    raw = [*(req.pairs or []), *([req.pair] if req.pair else [])]
    if not raw:
        raise ParamError("pairs", "give `pairs` (a list) or `pair`", where="body")
    out: list[str] = []
    for p in raw:
        sym = normalise_pair(p, "pairs")
        if not st.pair_known(sym):
            known = st.known_symbols()
            if sym not in known:
                listed = ", ".join(sorted(known)[:20]) or "none yet"
                raise ParamError("pairs", f"{sym!r} is not a known pair; known: {listed}", where="body")
        if sym not in out:
            out.append(sym)
    return out


def _time(value: str | int, param: str) -> int:
    ms = parse_time(str(value), param)
    assert ms is not None
    return ms


@router.post(
    "/start",
    response_model=BackfillStarted,
    status_code=202,
    dependencies=[Depends(require_write_token)],
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
        502: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
def start_backfill(st: State, req: BackfillRequest) -> BackfillStarted:
    """Backfill candles (every interval) and their quality assets for each UTC day of ``[start, end)`` × pairs.

    Launched through Dagster's GraphQL API as runs of many partitions each, straight into the run
    queue (no wait for the backfill daemon; ``api/backfills.py`` says why). The returned ``id``
    (``runs:<uuid>``) is the ``backfill_jobs`` row and the ``dm/backfill`` tag of every run;
    ``GET /backfill/jobs/{id}`` reports it live from those runs.
    """
    pairs = _pairs(req, st)
    check_period(req.period, CANDLE_PERIODS)
    start_ms, end_ms = _time(req.start, "start"), _time(req.end, "end")
    if start_ms >= end_ms:
        raise ParamError("start", "start must be before end; the range is [start, end)", where="body")
    partitions = plan_partitions(
        pairs,
        start_ms,
        end_ms,
        first_day=st.settings.partition_start,
        today=dt.datetime.now(dt.UTC).date(),
        max_days=st.api.max_backfill_days,
    )
    gql = st.dagster
    assets = [list(k) for k in BACKFILL_ASSETS]
    days = sorted({k.split("|")[0] for k in partitions})
    job_id = f"runs:{uuid.uuid4().hex}"
    try:
        ensure_symbol_partitions(gql, pairs)
        plans = plan_runs(days, pairs, symbol_order(gql), st.settings.backfill_partitions_per_run)
    except requests.RequestException as exc:
        raise UpstreamError(503, f"Dagster is not reachable at {gql.url}: {type(exc).__name__}") from exc
    except (DagsterAPIError, ValueError) as exc:
        raise UpstreamError(502, str(exc)[:500]) from exc
    # The row first: the runs' tracking finds it even if the launch is interrupted half way.
    st.meta.create_backfill_job(
        origin="api",
        status="requested",
        job_id=job_id,
        symbols=pairs,
        interval=req.period,
        start_time=start_ms,
        end_time=end_ms,
        partition_keys=partitions,
        requested_by="api",
    )
    tags = {"dm/origin": "api", "dm/period": req.period, BACKFILL_TAG: job_id}
    try:
        run_ids = launch_runs(gql, plans, assets, tags)
    except requests.RequestException as exc:
        st.meta.update_backfill_job(job_id, status="failure", error=f"Dagster unreachable: {type(exc).__name__}")
        raise UpstreamError(503, f"Dagster is not reachable at {gql.url}: {type(exc).__name__}") from exc
    except DagsterAPIError as exc:
        st.meta.update_backfill_job(job_id, status="failure", error=str(exc)[:2000])
        raise UpstreamError(502, str(exc)[:500]) from exc
    st.meta.update_backfill_job(job_id, dagster_run_ids=run_ids)
    return BackfillStarted(
        id=job_id,
        dagster_backfill_id=None,
        runs=run_ids,
        partitions=partitions,
        assets=["/".join(k) for k in BACKFILL_ASSETS],
        status="requested",
    )


@router.get(
    "/jobs",
    response_model=BackfillJobList,
    dependencies=[Depends(read_access)],
    responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def list_jobs(
    st: State,
    status: Annotated[str | None, Query(description=f"one of {', '.join(STATUSES)}", max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> BackfillJobList:
    """Backfill jobs newest first: API, UI, sensor and schedule backfills alike (as stored)."""
    if status is not None and status not in STATUSES:
        raise ParamError("status", f"{status!r} is not one of {', '.join(STATUSES)}")
    return BackfillJobList(jobs=st.meta.list_backfill_jobs(status, limit))  # type: ignore[arg-type]  # checked above


@router.get(
    "/jobs/{job_id}",
    response_model=BackfillJobView,
    dependencies=[Depends(read_access)],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
)
def get_job(
    st: State,
    job_id: Annotated[str, Path(max_length=64, description="the id POST /backfill/start returned")],
) -> BackfillJobView:
    """The stored job, with the live status from Dagster when Dagster answers.

    Dagster unreachable: a finished job is answered from the store (its status is final); an
    active one is a 503 naming Dagster, since its stored status may be stale.
    """
    job = st.meta.get_backfill_job(job_id)
    if job is None:
        raise ParamError("job_id", f"no backfill job {job_id!r}", status=404, where="path")
    live = None
    unreachable: str | None = None
    if job.dagster_backfill_id is None and job.origin == "api" and job.id.startswith("runs:"):
        try:
            runs = group_runs(st.dagster, job.id)
            status = run_group_status(r["status"] for r in runs)
            live = DagsterBackfillView(
                backfill_id=job.id,
                status=status.upper(),
                num_partitions=len(job.partition_keys or []),
                runs=[DagsterRun(run_id=r["runId"], status=r["status"]) for r in runs],
            )
            if status != job.status:  # keep the stored row in step (the tracking sensor does too)
                st.meta.update_backfill_job(job.id, status=status)
            return BackfillJobView(job=job, status=status, live=live, source="dagster")
        except requests.RequestException as exc:
            unreachable = f"{type(exc).__name__}"
            log.info("backfill %s: Dagster unreachable (%s)", job_id, exc)
        except (DagsterAPIError, KeyError, ValueError) as exc:
            log.info("backfill %s: Dagster status unavailable (%s); serving the stored row", job_id, exc)
    elif job.dagster_backfill_id:
        try:
            state_ = st.dagster.backfill(job.dagster_backfill_id)
            live = DagsterBackfillView(
                backfill_id=state_.backfill_id,
                status=state_.status,
                num_partitions=state_.num_partitions,
                runs=[DagsterRun(run_id=r["runId"], status=r["status"]) for r in state_.runs],
                error=state_.error,
            )
        except requests.RequestException as exc:
            unreachable = f"{type(exc).__name__}"
            log.info("backfill %s: Dagster unreachable (%s)", job_id, exc)
        except (DagsterAPIError, KeyError, ValueError) as exc:
            log.info("backfill %s: Dagster status unavailable (%s); serving the stored row", job_id, exc)
    if live is None and unreachable is not None and job.status in ACTIVE_BACKFILL_STATUSES:
        # A stored "running" may be long over: without Dagster the live status is unknown, and
        # saying so beats serving a stale one. Finished jobs are final in the store (below).
        raise UpstreamError(
            503,
            f"Dagster is unreachable ({unreachable}): the live status of backfill {job_id} is unknown "
            f"(last stored: {job.status}); retry later",
        )
    if live is None:
        return BackfillJobView(job=job, status=job.status, live=None, source="store")
    status = backfill_status(live.status, [r.status for r in live.runs])
    return BackfillJobView(job=job, status=status, live=live, source="dagster")


__all__ = ["BackfillJobRecord", "UpstreamError", "router", "run_status"]
