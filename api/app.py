"""The FastAPI read layer: ``uvicorn api.app:app``.

``create_app`` is a factory so tests (and the demo) can hand it their own stores;
the module-level ``app`` builds nothing that connects: stores are created on first use
and closed at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import ConnectionFailure, PyMongoError
from sqlalchemy.exc import DBAPIError

from api.deps import ApiSettings, AppState, AuthError
from api.metrics import ApiMetrics, MetricsMiddleware
from api.params import ParamError
from api.routes import analysis, backfill, catalog, data, health, orderbook
from dm_resources.dagster_client import DagsterGraphQL
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Market data for trading services: candles, trades, depth, funding, analytics,
data-quality health and the dataset catalog, read from MongoDB and the metadata database;
backfills started through Dagster.

* `start`/`end` accept ISO-8601 (naive = UTC) or epoch milliseconds; ranges are `[start, end)`.
* Pages carry `next` (the URL of the following page) while more rows exist; `format=ndjson`
  streams a whole range.
* Raw prices and quantities are decimal strings (no digit lost); candles and analytics are floats.
* Writes need `Authorization: Bearer <DM_API_TOKEN>`.
"""


def _error(status: int, loc: list[str | int], msg: str, type_: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"loc": loc, "msg": msg, "type": type_}]})


def create_app(
    settings: Settings | None = None,
    *,
    mongo: MongoStore | None = None,
    meta: MetadataStore | None = None,
    dagster: DagsterGraphQL | None = None,
    api_settings: ApiSettings | None = None,
) -> FastAPI:
    """An app over the given stores (or ones built from ``settings``/env on first use)."""
    st = AppState(
        settings=settings or get_settings(),
        api=api_settings or ApiSettings(),
        _mongo=mongo,
        _meta=meta,
        _dagster=dagster,
    )
    st.hot.ttl_s = st.api.cache_ttl_s
    st.hot.revalidate_s = st.api.cache_revalidate_s
    metrics = ApiMetrics()
    st.metrics = metrics

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        st.close()  # only what the app built itself; stores handed in belong to the caller

    app = FastAPI(title="Market Data Manager API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.dm = st
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ParamError)
    async def _param_error(_: Request, exc: ParamError) -> JSONResponse:
        return _error(
            exc.status, [exc.where, exc.param], exc.message, "not_found" if exc.status == 404 else "value_error"
        )

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        resp = _error(exc.status, ["header", "Authorization"], exc.message, "auth")
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(backfill.UpstreamError)
    async def _upstream(_: Request, exc: backfill.UpstreamError) -> JSONResponse:
        return _error(exc.status, ["dagster"], exc.message, "upstream")

    @app.exception_handler(ConnectionFailure)
    async def _mongo_down(_: Request, exc: ConnectionFailure) -> JSONResponse:
        log.warning("MongoDB unavailable: %s", exc)
        return _error(503, ["mongodb"], "MongoDB is unavailable; retry later", "unavailable")

    @app.exception_handler(PyMongoError)
    async def _mongo_error(_: Request, exc: PyMongoError) -> JSONResponse:
        log.error("MongoDB error: %s", exc)
        return _error(502, ["mongodb"], f"MongoDB error: {type(exc).__name__}", "store_error")

    @app.exception_handler(DBAPIError)
    async def _meta_error(_: Request, exc: DBAPIError) -> JSONResponse:
        log.warning("metadata database error: %s", exc)
        return _error(503, ["metadata"], "the metadata database is unavailable; retry later", "unavailable")

    for module in (health, data, orderbook, analysis, catalog, backfill):
        app.include_router(module.router)

    @app.get(
        "/metrics",
        include_in_schema=True,
        tags=["health"],
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
    )
    def prometheus_metrics() -> Response:
        """Request counts, latency histograms per route, in-flight requests, hot-cache hits."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


# Builds nothing that connects: stores are created on first use (see AppState).
app = create_app()
