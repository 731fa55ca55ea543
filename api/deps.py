"""Application state and FastAPI dependencies: stores built lazily, caches, auth.

``create_app`` takes ready-made stores (tests point them at their own servers) or builds
them from settings on first use, so importing ``api.app`` never connects anywhere.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.cache import HotCache, ValueCache, VersionWatcher
from api.contract.auth import SCOPE_BACKFILL, TokenRegistry, parse_tokens
from api.contract.auth import authorize as authorize_token
from api.contract.datasets import SCOPE_READ
from api.errors import AuthError
from api.l2 import L2Cache
from api.offload import InsertProcesses
from api.params import ParamError, check_known, normalise_pair
from api.queries import LatestHints
from api.strategy import Strategy, StrategyHolder, StrategyWatcher, builtin
from api.strategy_runtime import RateLimiter, on_reload_result
from dm_resources.candle_store import CandleStore
from dm_resources.dagster_client import DagsterGraphQL
from dm_resources.heap import freeze_heap
from dm_resources.metadata.store import MetadataStore
from dm_resources.mongo import MongoStore
from dm_resources.settings import Settings

if TYPE_CHECKING:
    from api.metrics import ApiMetrics

T = TypeVar("T")
# Where a pair's presence is probed when it is neither configured nor cataloged:
# (collection, equality on the index's middle fields, time field).
PAIR_PROBES: tuple[tuple[str, dict[str, str], str], ...] = (
    ("candle_buckets", {"interval": "1m"}, "start"),  # day buckets: start is the UTC day
    ("agg_trades", {}, "trade_time"),
    ("funding_rates", {}, "funding_time"),
)
PAIR_PROBE_WINDOW_MS = 30 * 86_400_000


class ApiSettings(BaseSettings):
    """API-only knobs (``DM_API_*``); the shared ones (token, URLs, symbols) stay in ``Settings``."""

    model_config = SettingsConfigDict(env_prefix="DM_API_", extra="ignore", frozen=True)

    protect_reads: bool = Field(default=False, description="require the token on GET routes too")
    tokens: SecretStr | None = Field(
        default=None, description="scoped tokens, JSON {token: [scopes]} (api/contract/auth.py); never logged"
    )
    cache_ttl_s: float = 5.0
    cache_revalidate_s: float = 0.5
    cache_enabled: bool = True
    cache_notify: bool = Field(
        default=True,
        description="invalidate the hot cache from dataset_versions (one poll per cache_poll_s) "
        "instead of probing the store per request",
    )
    cache_poll_s: float = 0.25
    cache_notified_ttl_s: float = 60.0
    symbols_ttl_s: float = 30.0
    mongo_timeout_ms: int = 3000
    mongo_retry_attempts: int = Field(
        default=2,
        ge=0,
        description="retries of a MongoDB call on a transient error (the API's store and its insert processes)",
    )
    dagster_timeout_s: float = 10.0
    max_backfill_days: int = 400
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above it, before parsing)"
    )
    idempotency_ttl_s: float = Field(
        default=86_400.0, ge=86_400.0, description="how long an Idempotency-Key and its answer are kept (>= 24 h)"
    )
    idempotency_lease_s: float = Field(
        default=60.0, gt=0, description="how long a request's claim on its key blocks a repeat (409) if it dies"
    )
    strategy_file: str | None = Field(
        default=None, description="the live strategy file (YAML or TOML, api/strategy.py); none: the built-in one"
    )
    strategy_poll_s: float = Field(default=1.0, gt=0, description="how often each process checks the strategy file")
    l2_timeout_ms: int = Field(default=50, ge=1, le=5000, description="per Redis command; then the store answers")
    l2_retry_s: float = Field(default=0.5, gt=0, description="first pause of L2 after a failure (doubles up to 5 s)")
    pattern_warmup: bool = Field(default=True, description="compile the pattern search's kernels at start-up")
    l2_wait_s: float = Field(default=0.5, ge=0, description="wait for another worker's fill before reading the store")
    insert_processes: int = Field(
        default=2,
        ge=0,
        le=32,
        description="worker processes that validate and store large kline inserts (api/offload.py); 0: in process",
    )
    switch_interval_ms: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="the server process's sys.setswitchinterval: how long a busy worker thread may keep the "
        "interpreter lock while the event loop waits for it (Python's default is 5 ms; see api/json_body.py)",
    )


@dataclass
class AppState:
    settings: Settings
    api: ApiSettings
    _mongo: MongoStore | None = None
    _meta: MetadataStore | None = None
    _dagster: DagsterGraphQL | None = None
    owned: list[Any] = field(default_factory=list)
    hot: HotCache[bytes] = field(default_factory=HotCache)
    hints: LatestHints = field(default_factory=LatestHints)
    metrics: ApiMetrics | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _symbols: ValueCache[frozenset[str]] | None = None
    _probed: dict[str, tuple[bool, float]] = field(default_factory=dict)
    _tokens: TokenRegistry | None = None
    strategy_holder: StrategyHolder | None = None
    l2: L2Cache | None = None
    limiter: RateLimiter = field(default_factory=RateLimiter)
    _strategy_watcher: StrategyWatcher | None = None

    @property
    def strategy(self) -> Strategy:
        """The active strategy (swapped whole on reload); built-in from the DM_API_CACHE_* settings without a file."""
        if self.strategy_holder is None:
            self.strategy_holder = StrategyHolder(
                builtin(
                    enabled=self.api.cache_enabled,
                    ttl_s=self.api.cache_ttl_s,
                    notified_ttl_s=self.api.cache_notified_ttl_s if self.api.cache_notify else self.api.cache_ttl_s,
                )
            )
        return self.strategy_holder.strategy

    def version(self, tag: str) -> int | None:
        """The dataset's version for L2 keys, or None when it is unknown (no watcher, or it cannot read)."""
        w = self._watcher
        return w.version(tag) if w is not None else None

    def start_strategy(self) -> None:
        """Load the strategy file and start polling it (the lifespan calls this; idempotent)."""
        _ = self.strategy
        path = self.api.strategy_file
        if not path or self._strategy_watcher is not None:
            return
        assert self.strategy_holder is not None
        w = StrategyWatcher(
            self.strategy_holder, path, poll_s=self.api.strategy_poll_s, on_result=lambda r: on_reload_result(self, r)
        )
        self._strategy_watcher = w.start()
        self.owned.append(w)

    @property
    def tokens(self) -> TokenRegistry:
        """``DM_API_TOKEN`` (every scope), ``DM_API_TOKENS`` (scoped) and ``DM_SERVICE_TOKENS``, parsed once."""
        if self._tokens is None:
            raw = self.api.tokens.get_secret_value() if self.api.tokens is not None else None
            services = self.settings.service_tokens
            self._tokens = parse_tokens(
                raw, self.settings.api_token, services.get_secret_value() if services is not None else None
            )
        return self._tokens

    _watcher: VersionWatcher | None = None
    _candles: CandleStore | None = None

    _inserts: InsertProcesses | None = None

    @property
    def inserts(self) -> InsertProcesses:
        """The pool of insert processes (started on the first large kline insert, closed with the app)."""
        return self._lazy(
            "_inserts",
            lambda: InsertProcesses(
                self.api.insert_processes,
                mongo_retry_attempts=self.api.mongo_retry_attempts,
                mongo_timeout_ms=self.api.mongo_timeout_ms,
            ),
        )

    @property
    def candles(self) -> CandleStore:
        if self._candles is None:
            self._candles = CandleStore(self.mongo)
        return self._candles

    def ensure_watcher(self) -> None:
        """Start the dataset-version watcher on first cached read (building the app must not connect)."""
        if self._watcher is not None or not self.api.cache_notify:
            return
        with self._lock:
            if self._watcher is None:
                w = VersionWatcher(self.hot, self.candles.versions_since, poll_s=self.api.cache_poll_s)
                self._watcher = w.start()
                self.owned.append(w)
                self.hot.ttl_s = max(self.hot.ttl_s, self.api.cache_notified_ttl_s)

    def open(self) -> None:
        """Create the stores and start the cache's version watcher: the app's lifespan calls this.

        Constructors do not block on the servers (pymongo connects in the background, SQLAlchemy
        on first use), so an API started while a store is down still starts, and readiness says
        which one is missing. The properties below build on first use only for callers that
        bypass the lifespan (an app driven without its server).
        """
        _ = self.mongo, self.meta, self.candles
        self.ensure_watcher()
        self.start_strategy()
        if self.api.pattern_warmup:
            threading.Thread(target=_warm_up_search, name="pattern-search-warm-up", daemon=True).start()

    def _lazy(self, attr: str, build: Callable[[], T]) -> T:
        value = getattr(self, attr)
        if value is None:
            with self._lock:
                value = getattr(self, attr)
                if value is None:
                    value = build()
                    setattr(self, attr, value)
                    self.owned.append(value)
        return value

    @property
    def mongo(self) -> MongoStore:
        return self._lazy(
            "_mongo",
            lambda: MongoStore(
                self.settings.mongo_url,
                self.settings.mongo_db,
                retry_attempts=self.api.mongo_retry_attempts,
                server_selection_timeout_ms=self.api.mongo_timeout_ms,
            ),
        )

    @property
    def meta(self) -> MetadataStore:
        return self._lazy("_meta", lambda: MetadataStore(self.settings.metadata_url))

    @property
    def dagster(self) -> DagsterGraphQL:
        return self._lazy(
            "_dagster", lambda: DagsterGraphQL(self.settings.dagster_graphql_url, timeout=self.api.dagster_timeout_s)
        )

    def known_symbols(self) -> frozenset[str]:
        """Configured symbols plus those in the catalog (cached ~30 s): the list an unknown-pair error shows."""
        if self._symbols is None:
            self._symbols = ValueCache(self._compute_symbols, ttl_s=self.api.symbols_ttl_s)
        return self._symbols.get()

    def _compute_symbols(self) -> frozenset[str]:
        found = set(self.settings.symbols)
        # The catalog is optional here; MongoDB is the source of truth (pair_known).
        with contextlib.suppress(Exception):
            found.update(d.symbol for d in self.meta.list_datasets() if d.symbol != "*")
        return frozenset(found)

    def pair_known(self, sym: str) -> bool:
        """Configured, cataloged, or present in the store (one index probe per collection, cached ~30 s).

        Probes are bounded index range reads over the last 30 days, not ``distinct("symbol")``
        nor an open ``find_one``: SecantusDB scans the whole collection or range for those
        (seconds for a year of candles). Older-only pairs are known through the catalog.
        """
        if sym in self.settings.symbols or sym in self.known_symbols():
            return True
        now = time.monotonic()
        with self._lock:
            hit = self._probed.get(sym)
        if hit is not None and now - hit[1] <= self.api.symbols_ttl_s:
            return hit[0]
        now_ms = int(time.time() * 1000)
        window = {"$gte": now_ms - PAIR_PROBE_WINDOW_MS - 86_400_000, "$lt": now_ms + 86_400_000}
        found = any(
            self.mongo.db[name].find_one({"symbol": sym, **extra, time_field: window}, {"_id": 1}) is not None
            for name, extra, time_field in PAIR_PROBES
        )
        with self._lock:
            if len(self._probed) > 10_000:
                self._probed.clear()
            self._probed[sym] = (found, now)
        return found

    def close(self) -> None:
        for obj in self.owned:
            obj_close = getattr(obj, "close", None)
            if obj_close is not None:
                obj_close()
        self.owned.clear()


def _warm_up_search() -> None:
    from dm_assets.analytics.patterns import warm_up

    with contextlib.suppress(Exception):  # a failed warm-up only makes the first search slower
        warm_up()
    freeze_heap("warm-up")  # what the warm-up imported (numba, dagster's modules) too


def state(request: Request) -> AppState:
    st: AppState = request.app.state.dm
    return st


async def _state_dep(request: Request) -> AppState:
    """Async on purpose: a sync dependency costs every request a thread-pool hop (measured on the hot path)."""
    st: AppState = request.app.state.dm
    return st


State = Annotated[AppState, Depends(_state_dep)]


def known_pair(pair: str, st: AppState) -> str:
    """Validate a client's ``pair`` string: shape first (so operators never reach a query), then existence."""
    sym = normalise_pair(pair)
    if st.pair_known(sym):
        return sym
    return check_known(sym, st.known_symbols())


_bearer = HTTPBearer(auto_error=False, description="DM_API_TOKEN")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def require_write_token(request: Request) -> None:
    """``POST /backfill/start``: ``DM_API_TOKEN``, or a scoped or service token with ``backfill:write``."""
    from api.identity import authorize

    authorize(request, SCOPE_BACKFILL)


async def read_access(request: Request) -> None:
    """Market data is open unless ``DM_API_PROTECT_READS`` is set; then a token with scope ``read``."""
    st = state(request)
    if st.api.protect_reads:
        from api.identity import authorize

        authorize(request, SCOPE_READ)


async def private_read(request: Request) -> None:
    """The services' own records (positions, PnL, ledger, configs, lifecycle): ``read`` whenever any token is set."""
    from api.identity import authorize

    authorize(request, SCOPE_READ, open_when_unset=True)


def require_scope(st: AppState, token: str | None, scope: str, request: Request | None = None) -> None:
    """Raise :class:`AuthError` unless the caller carries ``scope`` (the service header is read from ``request``)."""
    if request is not None:
        from api.identity import authorize

        authorize(request, scope)
        return
    authorize_token(st.tokens, token, scope)


__all__ = [
    "ApiSettings",
    "AppState",
    "AuthError",
    "ParamError",
    "State",
    "known_pair",
    "private_read",
    "read_access",
    "require_scope",
    "require_write_token",
    "state",
]
