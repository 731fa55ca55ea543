"""``/health*``: liveness, readiness of each dependency, and data-quality health per pair."""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from alembic.script import ScriptDirectory
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel
from sqlalchemy import inspect, text

from api.deps import AppState, State, read_access
from api.models import (
    DependencyCheck,
    ErrorResponse,
    HealthSummary,
    HealthSummaryItem,
    Liveness,
    PairHealth,
    Readiness,
    StrategyStatus,
)
from api.params import CANDLE_PERIODS, check_period, parse_range
from api.routes.common import ERRORS, End, KnownPair, Start
from dm_resources.dagster_client import DagsterGraphQL
from dm_resources.metadata.engine import alembic_config, head_revision
from dm_resources.mongo import COLLECTIONS

router = APIRouter(tags=["health"])
# Candle intervals plus "book": the order book's daily health (dm_assets/orderbook, interval "book").
HEALTH_PERIODS = (*CANDLE_PERIODS, "book")
READINESS_TIMEOUT_S = 3.0


@router.get("/health/liveness", response_model=Liveness)
async def liveness() -> Liveness:
    """The process serves requests; says nothing about the stores (see readiness).

    ``async`` so that it is answered on the event loop itself, with no thread-pool hop: a
    liveness probe must not queue behind the pool's work.
    """
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


# Dependencies whose loss takes the API out of its Service; the rest only degrade it
# (Dagster: only the backfill routes need it, and they answer 503 naming it).
REQUIRED = ("mongodb", "metadata")
UPGRADE_COMMAND = "python -m dm_resources.metadata upgrade"


@functools.lru_cache(maxsize=1)
def _known_revisions() -> frozenset[str]:
    """Revisions shipped with this code (parsed once: they cannot change while it runs)."""
    script = ScriptDirectory.from_config(alembic_config())
    return frozenset(r.revision for r in script.walk_revisions())


@functools.lru_cache(maxsize=1)
def _head() -> str:
    return head_revision()


def schema_problem(meta: Any) -> str | None:
    """Why the metadata schema cannot serve the API (never created, or behind the code), or None.

    A revision this code does not know is *newer* (a rolling deploy migrated ahead of this
    pod): migrations only add, so it is not a reason to leave the Service.
    """
    current, head = meta.current_revision(), _head()
    if current == head or (current is not None and current not in _known_revisions()):
        return None
    if current is None:
        return (
            "the metadata database has no schema (it was never created): run "
            f"`{UPGRADE_COMMAND}` with DM_METADATA_URL pointing at it"
        )
    return (
        f"the metadata schema is at revision {current}, this code needs {head}: run `{UPGRADE_COMMAND}` "
        "with DM_METADATA_URL pointing at it"
    )


def missing_table_hint(exc: BaseException) -> str | None:
    """The message for a metadata error caused by a missing table (schema not created or not migrated)."""
    orig = getattr(exc, "orig", None) or exc
    message = str(orig).lower()
    args = getattr(orig, "args", ())
    code = args[0] if args else None
    if "no such table" in message or code == 1146 or ("relation" in message and "does not exist" in message):
        return (
            "the metadata database schema is missing or not migrated (a table does not exist): run "
            f"`{UPGRADE_COMMAND}` with DM_METADATA_URL pointing at it"
        )
    return None


def _meta_ready(st: AppState) -> bool:
    if not st.meta.ping():
        return False
    problem = schema_problem(st.meta)
    if problem:
        raise RuntimeError(problem)
    return True


@router.get(
    "/health/readiness",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "MongoDB or the metadata database is down; `down` names it"}},
)
def readiness(st: State, response: Response) -> Readiness:
    """MongoDB and the metadata database gate readiness; Dagster's GraphQL API only degrades it (200).

    On Kubernetes a Dagster restart must not take every API pod out of its Service: reads
    need only the two stores, and the backfill routes answer 503 naming Dagster meanwhile.
    """
    dagster = DagsterGraphQL(st.settings.dagster_graphql_url, timeout=READINESS_TIMEOUT_S)
    probes = {
        "mongodb": lambda: _mongo_ping(st),
        "metadata": lambda: _meta_ready(st),
        "dagster": dagster.ping,
    }
    l2 = st.l2
    if l2 is not None:  # the shared cache only degrades: reads fall through to the store
        probes["cache"] = l2.ping
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        futures = {name: pool.submit(_probe, name, fn) for name, fn in probes.items()}
        checks = [f.result() for f in futures.values()]
    dagster.session.close()
    down = [c.name for c in checks if not c.ok and c.name in REQUIRED]
    degraded = [c.name for c in checks if not c.ok and c.name not in REQUIRED]
    if down:
        response.status_code = 503
    state = "not_ready" if down else "degraded" if degraded else "ready"
    if l2 is not None and st.metrics is not None:
        st.metrics.l2_up.set(1 if l2.up else 0)
    return Readiness(
        status="unhealthy" if down else "healthy",
        state=state,
        down=down,
        degraded=degraded,
        checks=checks,
        strategy=strategy_status(st),
    )


def strategy_status(st: AppState, *, full: bool = False) -> StrategyStatus:
    _ = st.strategy
    assert st.strategy_holder is not None
    h = st.strategy_holder
    return StrategyStatus.model_validate(
        {
            **h.status(),
            "pid": os.getpid(),
            "strategy": h.strategy.model_dump(mode="json") if full else None,
        }
    )


@router.get("/health/strategy", response_model=StrategyStatus, summary="The live strategy this worker applies")
async def strategy(st: State) -> StrategyStatus:
    """The strategy this worker applies (cache levels and TTLs, limits, rate limits), its version and last reload.

    Rate limits name tokens by id (SHA-256 prefix), never by the token. ``pid`` tells the workers of
    one pod apart; each reloads the file on its own within ``DM_API_STRATEGY_POLL_S``.
    """
    return strategy_status(st, full=True)


class StoreStatus(BaseModel):
    connected: bool
    latency_ms: float
    error: str | None = None
    counts: dict[str, int] = {}


class DatabasesStatus(BaseModel):
    mongodb: StoreStatus
    metadata: StoreStatus


def _timed(fn: Any) -> StoreStatus:
    started = time.perf_counter()
    try:
        counts = fn()
        return StoreStatus(connected=True, latency_ms=_ms(started), counts=counts)
    except Exception as exc:  # a status report, never a 500
        return StoreStatus(connected=False, latency_ms=_ms(started), error=f"{type(exc).__name__}: {str(exc)[:200]}")


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _mongo_counts(st: AppState) -> dict[str, int]:
    st.mongo.client.admin.command("ping")
    # Estimated counts come from collection metadata: no scan (count_documents would scan).
    return {name: int(st.mongo.db[name].estimated_document_count()) for name in COLLECTIONS}


def _meta_counts(st: AppState) -> dict[str, int]:
    engine = st.meta.engine
    with engine.connect() as conn:
        if engine.dialect.name in ("mysql", "mariadb"):
            # InnoDB's estimate (information_schema): COUNT(*) would scan audit_logs.
            rows = conn.execute(
                text("SELECT table_name, table_rows FROM information_schema.tables WHERE table_schema = DATABASE()")
            )
            return {str(name): int(n or 0) for name, n in rows}
        names = inspect(conn).get_table_names()
        return {n: int(conn.execute(text(f'SELECT COUNT(*) FROM "{n}"')).scalar() or 0) for n in names}


@router.get("/health/databases", response_model=DatabasesStatus, dependencies=[Depends(read_access)])
def databases(st: State) -> DatabasesStatus:
    """Per store: connected, latency, and row counts per collection/table (estimates where counting would scan)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        mongo = pool.submit(_timed, lambda: _mongo_counts(st))
        meta = pool.submit(_timed, lambda: _meta_counts(st))
        return DatabasesStatus(mongodb=mongo.result(), metadata=meta.result())


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
        Query(
            description="interval to summarise; default: each pair's worst interval on its latest day",
            max_length=8,
        ),
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
    responses=ERRORS,
)
def pair_health(
    st: State,
    pair: KnownPair,
    period: Annotated[
        str | None, Query(description=f"one of {', '.join(HEALTH_PERIODS)}; all when omitted", max_length=8)
    ] = None,
    start: Start = None,
    end: End = None,
) -> PairHealth:
    """Daily health rows of one pair (days touched by ``[start, end)``), oldest first."""
    sym = pair
    if period is not None:
        check_period(period, HEALTH_PERIODS)
    lo, hi = parse_range(start, end)
    day_from = dt.datetime.fromtimestamp(lo / 1000, tz=dt.UTC).date() if lo is not None else None
    day_to = dt.datetime.fromtimestamp((hi - 1) / 1000, tz=dt.UTC).date() if hi is not None else None
    rows = st.meta.health(sym, period, day_from, day_to)
    return PairHealth(pair=sym, rows=rows)
