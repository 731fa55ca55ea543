"""Prometheus metrics: request counts and latency histograms per route template.

Labels use the route *template* (``/catalog/datasets/{dataset_id}``), never the raw path,
so a client walking ids cannot blow up label cardinality; unmatched paths are one label.
Each app gets its own registry so several apps (tests) in one process do not collide.
"""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CACHE_BUCKETS = (0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "dm_api_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dm_api_request_duration_seconds",
            "Time to the end of the response body",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("dm_api_requests_in_flight", "Requests being served", registry=self.registry)
        self.cache = Counter("dm_api_cache_total", "Hot cache lookups by result", ["result"], registry=self.registry)
        self.auth = Counter(
            "dm_api_auth_total",
            "Authorisation decisions by service, route template and decision (verified, off, open, or, for "
            "what audit mode let pass or enforce refused: no_token, bad_token, token_mismatch, "
            "unknown_service, bad_service_name, scope, disabled)",
            ["service", "route", "decision", "passed"],
            registry=self.registry,
        )
        # Per level: hit, miss, error (L2 failed within its timeout), skipped (L2 circuit open).
        self.cache_lookups = Counter(
            "dm_api_cache_lookups_total",
            "Cache lookups by level and result",
            ["level", "result"],
            registry=self.registry,
        )
        self.cache_latency = Histogram(
            "dm_api_cache_lookup_seconds",
            "Cache lookup time by level",
            ["level"],
            buckets=CACHE_BUCKETS,
            registry=self.registry,
        )
        self.store_reads = Counter(
            "dm_api_cache_store_reads_total",
            "Reads the cache sent to the store (misses of every level) by dataset",
            ["dataset"],
            registry=self.registry,
        )
        self.l2_up = Gauge(
            "dm_api_cache_l2_up", "1 while the L2 cache answers (absent without DM_REDIS_URL)", registry=self.registry
        )
        self.strategy = Info("dm_api_strategy", "The active strategy file's version and digest", registry=self.registry)
        self.strategy_reloads = Counter(
            "dm_api_strategy_reloads_total", "Strategy file reads by result", ["result"], registry=self.registry
        )
        self.strategy_last_ok = Gauge(
            "dm_api_strategy_last_reload_ok", "1 when the last strategy file read was applied", registry=self.registry
        )
        self.strategy_last_at = Gauge(
            "dm_api_strategy_last_reload_timestamp_seconds",
            "When the strategy file was last read",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "dm_api_rate_limited_total", "Requests refused by the per-token rate limits", registry=self.registry
        )
        # Each uvicorn worker has its own registry: the pid tells the scrapes of a multi-worker pod apart.
        self.process = Info("dm_api_process", "The API worker process", registry=self.registry)
        self.process.info({"pid": str(os.getpid())})


class MetricsMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware) so streamed responses are timed to their last byte."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - started)
