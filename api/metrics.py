"""Prometheus metrics: request counts and latency histograms per route template.

Labels use the route *template* (``/catalog/datasets/{dataset_id}``), never the raw path,
so a client walking ids cannot blow up label cardinality; unmatched paths are one label.
Each app gets its own registry so several apps (tests) in one process do not collide.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
