"""Prometheus metrics, health endpoints and JSON logs of the ingest service.

Each service instance has its own registry so several can run in one process (tests)
without clashing on metric names. The HTTP server is the standard library's, in a
daemon thread: probes and scrapes never wait on the event loop.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "ingest_messages_received", "Messages fetched from NATS, by event type", ["event_type"], registry=r
        )
        self.stored = Counter(
            "ingest_documents_stored", "Documents newly written, by collection", ["collection"], registry=r
        )
        self.duplicates = Counter(
            "ingest_documents_duplicate",
            "Documents already present (redelivery, replay, older funding update)",
            ["collection"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "ingest_dead_letters", "Messages recorded in dead_letters, by event type", ["event_type"], registry=r
        )
        self.open_klines = Counter("ingest_open_klines_skipped", "Kline updates with x=false (not stored)", registry=r)
        self.acked = Counter("ingest_messages_acked", "Messages acknowledged after their write", registry=r)
        self.store_retries = Counter("ingest_store_retries", "Batch writes retried after a store error", registry=r)
        self.batch_size = Histogram(
            "ingest_batch_size",
            "Messages per fetched batch",
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
        )
        self.write_seconds = Histogram(
            "ingest_write_seconds",
            "Bulk write latency per collection",
            ["collection"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.consumer_pending = Gauge(
            "ingest_consumer_pending", "Messages in the stream not yet delivered to the durable consumer", registry=r
        )
        self.consumer_ack_pending = Gauge(
            "ingest_consumer_ack_pending", "Messages delivered and not yet acked (all replicas)", registry=r
        )
        self.ready = Gauge("ingest_ready", "1 when connected to NATS and MongoDB writes succeed", registry=r)


class HealthServer:
    """``/metrics``, ``/health/liveness`` and ``/health/readiness`` on one port."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: Callable[[], tuple[bool, dict[str, Any]]],
        readiness: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].rstrip("/")
                if path == "/metrics":
                    self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                elif path in ("/health/liveness", "/livez"):
                    self._health(*liveness())
                elif path in ("/health/readiness", "/readyz"):
                    self._health(*readiness())
                else:
                    self._send(404, b'{"error":"not found"}', "application/json")

            def _health(self, ok: bool, detail: dict[str, Any]) -> None:
                body = orjson.dumps({"status": "ok" if ok else "unavailable", **detail})
                self._send(200 if ok else 503, body, "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # probes every few seconds: keep logs quiet
                return

        self.registry = registry
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ingest-http", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in self._STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats-py and pymongo are chatty at DEBUG/INFO during reconnects; our own logs say what matters.
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("pymongo").setLevel(logging.WARNING)
