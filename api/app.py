"""The FastAPI read layer: ``uvicorn api.app:app``.

``create_app`` is a factory so tests (and the demo) can hand it their own stores;
the module-level ``app`` builds nothing at import: the lifespan creates the stores (and the
cache's version watcher) when the server starts and closes what it built at shutdown.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import errors
from api.bounds import RequestBounds
from api.deps import ApiSettings, AppState
from api.identity import WriteAuditMiddleware
from api.l2 import L2Cache
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import (
    analysis,
    backfill,
    catalog,
    collections,
    data,
    health,
    ledger,
    lifecycle,
    orderbook,
    platform,
    positions,
    trading,
)
from api.routes import config as config_routes
from api.strategy_runtime import RateLimiter, enforce_strategy, record_strategy
from dm_resources.dagster_client import DagsterGraphQL
from dm_resources.heap import freeze_heap
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
* Writes need `Authorization: Bearer <token>`: `DM_API_TOKEN` (every scope) or a scoped token
  from `DM_API_TOKENS` (`positions:write`, `pnl:write`, `klines:write`, `read`).
* `GET /analysis/similar` finds the past windows shaped most like a pair's latest bars and what followed them.
* `GET /health/strategy` shows the operators' live strategy (cache levels, limits, rate limits) this worker applies.
* `/api/v1/...` is the trading services' contract (positions, daily PnL, extractor klines,
  market data by allow-list); `/positions` and `/pnl/daily` are its typed reads.
"""


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
    st.tokens  # noqa: B018  fail fast on a malformed DM_API_TOKENS (the error never shows a token)
    st.hot.ttl_s = st.api.cache_ttl_s
    st.hot.revalidate_s = st.api.cache_revalidate_s
    metrics = ApiMetrics()
    st.metrics = metrics
    if st.settings.redis_url:
        st.l2 = L2Cache(
            st.settings.redis_url,
            prefix=f"dm:l2:{st.settings.mongo_db}:",
            timeout_s=st.api.l2_timeout_ms / 1000,
            retry_s=st.api.l2_retry_s,
            wait_s=st.api.l2_wait_s,
        )
        st.owned.append(st.l2)
        st.limiter = RateLimiter(
            st.settings.redis_url, prefix=f"dm:rl:{st.settings.mongo_db}", timeout_s=st.api.l2_timeout_ms / 1000
        )
    record_strategy(st)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The event loop (liveness included) waits up to one switch interval for the interpreter
        # lock each time a worker thread validating a large batch holds it: 1 ms, not 5 ms.
        sys.setswitchinterval(st.api.switch_interval_ms / 1000)
        st.open()
        freeze_heap("lifespan")  # full GC passes skip the imported modules (dm_resources/heap.py says why)
        yield
        st.close()  # only what the app built itself; stores handed in belong to the caller

    app = FastAPI(
        title="Market Data Manager API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(enforce_strategy)],
    )
    _serve_docs_offline(app)
    app.state.dm = st
    app.add_middleware(RequestBounds, max_body_bytes=st.api.max_body_bytes)  # before any route parses a byte
    app.add_middleware(errors.Unhandled)
    app.add_middleware(WriteAuditMiddleware)  # outside Unhandled: records the status the client got
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts every answer, 500s included
    errors.install(app)

    for module in (health, data, orderbook, analysis, catalog, backfill):
        app.include_router(module.router)
    # The services' typed route families come before the generic /api/v1/{database}/{collection}.
    for module in (trading, ledger, config_routes, lifecycle, collections):
        app.include_router(module.router)
    for module in (platform, positions):  # the trading services' contract and typed routes
        app.include_router(module.router)
    app.include_router(collections.dataset_router)  # POST /api/v1/{database}/{collection}, after /api/v1/data/*

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


DOCS_ASSETS = "/docs-assets"


def _serve_docs_offline(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` with Swagger UI and ReDoc served by this app, not from a CDN.

    FastAPI's default pages load their JS/CSS from a CDN and render blank on a machine
    without internet (trading hosts often are). The assets come from the ``fastapi-offline``
    package; the pages are FastAPI's own (``get_swagger_ui_html``), only pointed here.
    """
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


# Builds nothing that connects: stores are created on first use (see AppState).
app = create_app()
