"""``/health*``: liveness, readiness of each dependency, and data-quality health per pair."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from api.deps import AppState, State, known_pair, read_access
from api.models import (
    DependencyCheck,
    ErrorResponse,
    HealthSummary,
    HealthSummaryItem,
    Liveness,
    PairHealth,
    Readiness,
)
from api.params import CANDLE_PERIODS, check_period, parse_range
from api.routes.data import End, Pair, Start
from dm_resources.dagster_client import DagsterGraphQL

router = APIRouter(tags=["health"])
# Candle intervals plus "book": the order book's daily health (dm_assets/orderbook, interval "book").
HEALTH_PERIODS = (*CANDLE_PERIODS, "book")
READINESS_TIMEOUT_S = 3.0


@router.get("/health/liveness", response_model=Liveness)
def liveness() -> Liveness:
    """The process serves requests; says nothing about the stores (see readiness)."""
    return Liveness(status="ok")


def _probe(name: str, fn: Any) -> DependencyCheck:
    started = time.perf_counter()
    try:
        ok, error = bool(fn()), None
        if not ok:
            error = "did not answer"
    except Exception as exc:  # a probe reports, it never raises
        ok, error = False, f"{type(exc).__name__}: {str(exc)[:200]}"
    return DependencyCheck(name=name, ok=ok, latency_ms=round((time.perf_counter() - started) * 1000, 2), error=error)


def _mongo_ping(st: AppState) -> bool:
    st.mongo.client.admin.command("ping")
    return True


@router.get(
    "/health/readiness",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is down; `down` names it"}},
)
def readiness(st: State, response: Response) -> Readiness:
    """MongoDB, the metadata database (MySQL/SQLite) and Dagster's GraphQL API, probed in parallel."""
    dagster = DagsterGraphQL(st.settings.dagster_graphql_url, timeout=READINESS_TIMEOUT_S)
    probes = {
        "mongodb": lambda: _mongo_ping(st),
        "metadata": st.meta.ping,
        "dagster": dagster.ping,
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_probe, name, fn) for name, fn in probes.items()}
        checks = [f.result() for f in futures.values()]
    dagster.session.close()
    down = [c.name for c in checks if not c.ok]
    if down:
        response.status_code = 503
    return Readiness(status="not_ready" if down else "ready", down=down, checks=checks)


@router.get(
    "/health/summary",
    response_model=HealthSummary,
    dependencies=[Depends(read_access)],
    responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def summary(
    st: State,
    period: Annotated[
        str | None,
        Query(description="candle interval to summarise; default: the most recently computed per pair", max_length=8),
    ] = None,
) -> HealthSummary:
    """Each pair's latest daily data-quality score (from ``health_metrics``)."""
    if period is not None:
        check_period(period, HEALTH_PERIODS)
    latest = st.meta.latest_health_by_symbol(period)
    return HealthSummary(
        pairs=[
            HealthSummaryItem(
                pair=r.symbol,
                interval=r.interval,
                day=r.day.isoformat(),
                score=r.score,
                completeness=r.completeness,
                freshness=r.freshness,
                consistency=r.consistency,
                computed_at=r.computed_at.isoformat(),
            )
            for r in latest.values()
        ]
    )


@router.get(
    "/health",
    response_model=PairHealth,
    dependencies=[Depends(read_access)],
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
def pair_health(
    st: State,
    pair: Pair,
    period: Annotated[
        str | None, Query(description=f"one of {', '.join(HEALTH_PERIODS)}; all when omitted", max_length=8)
    ] = None,
    start: Start = None,
    end: End = None,
) -> PairHealth:
    """Daily health rows of one pair (days touched by ``[start, end)``), oldest first."""
    sym = known_pair(pair, st)
    if period is not None:
        check_period(period, HEALTH_PERIODS)
    lo, hi = parse_range(start, end)
    day_from = dt.datetime.fromtimestamp(lo / 1000, tz=dt.UTC).date() if lo is not None else None
    day_to = dt.datetime.fromtimestamp((hi - 1) / 1000, tz=dt.UTC).date() if hi is not None else None
    rows = st.meta.health(sym, period, day_from, day_to)
    return PairHealth(pair=sym, rows=rows)
