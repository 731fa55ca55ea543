"""Ingest-only settings (``DM_INGEST_*``); shared ones (NATS, MongoDB) come from ``dm_resources.settings``.

Defaults are tuned for the embedded store on 2 cores: batches of 1000 keep a bulk
insert near the store's bare rate while a short fetch timeout keeps latency low at
modest rates (a fetch returns as soon as what is there is taken, or after the timeout).
"""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from dm_resources.settings import SettingsError


class IngestSettings(BaseSettings):
    """Batching, consumer, stream retention and observability knobs of the ingest service."""

    model_config = SettingsConfigDict(env_prefix="DM_INGEST_", extra="ignore", frozen=True)

    batch_size: int = Field(1000, ge=1, le=10_000)
    fetch_timeout_s: float = Field(0.1, gt=0, le=30)
    # Fetched batches queued behind the one being written (pipelining; bounded so an
    # outage stops fetching instead of piling messages up in memory).
    prefetch_batches: int = Field(2, ge=1, le=16)
    # Long enough for one Mongo retry cycle; while retrying the service also sends
    # "in progress" for every held message, so an outage longer than this is no storm.
    ack_wait_s: float = Field(30.0, gt=0)
    max_ack_pending: int = Field(20_000, ge=1)
    retry_max_backoff_s: float = Field(5.0, gt=0)
    mongo_timeout_ms: int = Field(2000, ge=100)
    shutdown_grace_s: float = Field(3.0, gt=0)
    metrics_host: str = "0.0.0.0"
    # 0 = any free port (the chosen one is logged, event "http_started"); a taken port exits 2.
    metrics_port: int = Field(9108, ge=0, le=65535)
    # Stream retention (limits policy). 0 means unlimited.
    stream_max_age_s: float = Field(7 * 24 * 3600, ge=0)
    stream_max_bytes: int = Field(0, ge=0)
    stream_max_msgs: int = Field(0, ge=0)
    stream_replicas: int = Field(1, ge=1, le=5)
    log_level: str = "INFO"
    log_json: bool = True


def load_ingest_settings(**overrides: object) -> IngestSettings:
    """Like ``dm_resources.settings.load_settings``: one line per bad variable, naming it."""
    try:
        return IngestSettings(**overrides)  # type: ignore[arg-type]  # pydantic validates the overrides
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"DM_INGEST_{field.upper()}={err.get('input')!r}: {msg}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
