"""The strategy applied to requests: page and batch limits, rate limits per token, reload bookkeeping.

One app-wide dependency (:func:`enforce_strategy`) reads the active strategy on every request, so a
reloaded file takes effect on the next request of every process without touching the routes.
Rate limits use the ``limits`` library (fixed windows). With ``DM_REDIS_URL`` the windows live in
Redis, so a token's rate holds across every worker and pod; without it (or while Redis fails) they
are counted in each worker's memory, where N workers allow up to N × the rate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from fastapi import Request
from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.errors import StorageError

from api.contract.filters import MAX_BATCH_OPERATIONS, MAX_BATCH_RECORDS
from api.errors import ApiError
from api.params import MAX_LIMIT, ParamError
from api.strategy import ReloadResult, Strategy, token_id

if TYPE_CHECKING:
    from api.deps import AppState


log = logging.getLogger(__name__)

# Probes and scrapes carry no token: a rate limit on them would take healthy pods out of service.
UNLIMITED = frozenset({"/health/liveness", "/health/readiness", "/metrics"})


class RateLimited(ApiError):
    """A token (or an anonymous client) spent its rate; answered 429 with ``Retry-After``."""

    def __init__(self, who: str, limit: RateLimitItem, retry_after_s: int) -> None:
        super().__init__(
            429,
            f"{who}: rate limit {limit} exceeded",
            loc=("header", "Authorization"),
            kind="rate_limited",
            headers={"Retry-After": str(retry_after_s)},
        )
        self.who = who
        self.limit = limit
        self.retry_after_s = retry_after_s


def _async_uri(url: str) -> str:
    """``limits``' name for a redis-py asyncio connection to the same server."""
    for plain, aio in (
        ("rediss://", "async+rediss://"),
        ("redis://", "async+redis://"),
        ("unix://", "async+redis+unix://"),
    ):
        if url.startswith(plain):
            return aio + url[len(plain) :]
    raise ValueError(f"not a Redis URL: {url.split('@')[-1]}")


class RateLimiter:
    """Fixed-window counters per token: shared in Redis when configured, else (and while it fails) in memory."""

    def __init__(
        self, redis_url: str | None = None, *, prefix: str = "dm:rl", timeout_s: float = 0.05, retry_s: float = 1.0
    ) -> None:
        self.memory = FixedWindowRateLimiter(MemoryStorage())
        self.shared: FixedWindowRateLimiter | None = None
        if redis_url:
            storage = RedisStorage(
                _async_uri(redis_url),
                implementation="redispy",
                key_prefix=prefix,
                wrap_exceptions=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
            )
            self.shared = FixedWindowRateLimiter(storage)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._shared_down_until = 0.0
        self.fallbacks = 0

    async def _check(self, limiter: FixedWindowRateLimiter, item: RateLimitItem, key: str) -> float | None:
        """None when the hit is allowed, else the seconds until the window resets."""
        if await asyncio.wait_for(limiter.hit(item, "dm", key), self.timeout_s * 4):
            return None
        stats = await asyncio.wait_for(limiter.get_window_stats(item, "dm", key), self.timeout_s * 4)
        return stats.reset_time - time.time()

    async def hit(self, items: list[RateLimitItem], who: str, key: str) -> None:
        for item in items:
            wait: float | None
            if self.shared is not None and time.monotonic() >= self._shared_down_until:
                try:
                    wait = await self._check(self.shared, item, key)
                except (StorageError, TimeoutError, OSError) as exc:
                    # Redis unavailable: count in memory for a while rather than refuse or stall requests
                    self._shared_down_until = time.monotonic() + self.retry_s
                    self.fallbacks += 1
                    log.warning("rate limits counted per worker while Redis fails: %s", type(exc).__name__)
                    wait = await self._check(self.memory, item, key)
            else:
                wait = await self._check(self.memory, item, key)
            if wait is not None:
                raise RateLimited(who, item, max(1, math.ceil(wait)))


def on_reload_result(st: AppState, res: ReloadResult) -> None:
    """After each read of the strategy file: metrics, and an L1 flush when a new strategy took effect."""
    m = st.metrics
    if res.result == "ok":
        st.hot.invalidate()  # entries were admitted under the old levels and TTLs
    if m is None:
        return
    m.strategy_reloads.labels(res.result).inc()
    m.strategy_last_ok.set(1 if res.result == "ok" else 0)
    m.strategy_last_at.set(res.at)
    record_strategy(st)


def record_strategy(st: AppState) -> None:
    if st.metrics is not None and st.strategy_holder is not None:
        h = st.strategy_holder
        st.metrics.strategy.info({"version": h.strategy.version, "digest": h.digest, "source": h.source})


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-token") or None


def _check_limit(strategy: Strategy, request: Request) -> None:
    raw = request.query_params.get("limit")
    if raw is None:
        return
    try:
        n = int(raw)
    except ValueError:
        return  # the route's own validation names a malformed limit
    page_max = strategy.limits.page_max
    if page_max < n <= MAX_LIMIT:  # above the hard ceiling the route's own validation answers
        raise ParamError("limit", f"{n} is above this server's page limit of {page_max}; page with `next`")


def _check_batch(strategy: Strategy, body: Any) -> None:
    if not isinstance(body, dict):
        return
    lim = strategy.limits
    records, operations = body.get("records"), body.get("operations")
    # Above the hard ceilings the service's own checks answer; the strategy only lowers them.
    if isinstance(records, list) and lim.batch_records_max < len(records) <= MAX_BATCH_RECORDS:
        raise ParamError(
            "records",
            f"{len(records)} records exceed this server's batch limit of {lim.batch_records_max}; split the batch",
            status=413,
            where="body",
        )
    if isinstance(operations, list):
        if lim.batch_operations_max < len(operations) <= MAX_BATCH_OPERATIONS:
            raise ParamError(
                "operations",
                f"{len(operations)} operations exceed this server's batch limit of {lim.batch_operations_max}",
                status=413,
                where="body",
            )
        inserted = sum(
            len(op["data"]) if isinstance(op.get("data"), list) else 1
            for op in operations
            if isinstance(op, dict) and op.get("type") == "insert"
        )
        if lim.batch_records_max < inserted <= MAX_BATCH_RECORDS:
            raise ParamError(
                "operations",
                f"{inserted} records in insert operations exceed this server's batch limit of {lim.batch_records_max}",
                status=413,
                where="body",
            )


async def enforce_strategy(request: Request) -> None:
    """Every route: the strategy's rate limit for the caller's token, then its page and batch limits.

    Async and free of I/O, so it adds no thread hop to the hot read path. The body of a JSON
    request is the one FastAPI already parsed (Starlette caches it on the request).
    """
    st: AppState = request.app.state.dm
    strategy = st.strategy
    rl = strategy.rate_limits
    limited = rl.default is not None or rl.anonymous is not None or rl.tokens
    if limited and request.url.path not in UNLIMITED:
        token = _bearer(request)
        tid = token_id(token) if token else None
        items = rl.items_for(tid)
        if items:
            who = f"token {tid}" if tid else "anonymous client"
            key = tid or f"anon:{request.client.host if request.client else '?'}"
            try:
                await st.limiter.hit(items, who, key)
            except RateLimited:
                if st.metrics is not None:
                    st.metrics.rate_limited.inc()
                raise
    _check_limit(strategy, request)
    route = request.scope.get("route")
    if request.method in ("POST", "PUT") and getattr(route, "body_field", None) is not None:
        try:
            body = await request.json()
        except ValueError:
            return  # FastAPI answers a malformed body with its own 422
        _check_batch(strategy, body)
