"""Sync and async clients for the Market Data Manager API (httpx).

* **Every write carries an ``Idempotency-Key``**: one key per logical call (a UUID4, or the one
  the caller passes as ``idempotency_key=``), sent unchanged on every retry. The server runs
  the write once and answers every repeat with the first answer, so a write is retried like a
  read: after a 5xx, a 429, a connection that failed, and a response lost after the server
  answered (:class:`NoResponse`). A write without a key is never retried. The key is on every
  error a write raises (``exc.idempotency_key``): pass it again to retry the same write later.
* **Reads are retried** on connection errors, lost responses and 5xx/429.
* Exponential backoff with jitter; ``Retry-After`` (429, and 409 "key in use") is honoured.
  A 4xx other than those is the caller's mistake and is raised at once as a typed exception.
* Path parameters (``position_id``, ``collection``) are percent-encoded: ``../pnl/daily`` is an
  id, never a path.
* Every method is a thin wrapper over a :class:`Call` (method, path, params, body, result
  type) built once in :class:`_Calls`, so the sync and async clients cannot drift apart.
* Tokens go in the ``Authorization`` header only and are never part of a message.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from dm_client.errors import DMError, KeyInUse, NoResponse, RateLimited, ServerError, TransportError, error_for
from dm_client.models import (
    BatchResult,
    DailyPnlList,
    DeleteResult,
    InsertResult,
    Position,
    PositionList,
    QueryResult,
    UpdateResult,
)

R = TypeVar("R")
MAX_RETRY_AFTER_S = 60.0


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENCY_HEADER = "Idempotency-Key"


def new_key() -> str:
    """A fresh idempotency key (a UUID4): one per logical write."""
    return str(uuid.uuid4())


def seg(value: Any) -> str:
    """One path segment, percent-encoded (``/`` and ``..`` included): a value never becomes a path."""
    return quote(str(value), safe="")


@dataclass(frozen=True)
class Call(Generic[R]):
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    result: type[Any] | None = None  # a pydantic model, or None for the raw JSON
    ok_statuses: tuple[int, ...] = ()  # extra statuses returned rather than raised (readiness 503)
    idempotency_key: str | None = None  # sent on every attempt of a write
    read_only: bool = False  # a read sent with another method (POST /api/v1/data/query)

    @property
    def safe(self) -> bool:
        return self.read_only or self.method.upper() in SAFE_METHODS

    def keyed(self, key: str | None) -> Call[R]:
        """This call with ``key`` (a new one when None) if it is a write; reads need none."""
        if self.safe:
            return self
        return replace(self, idempotency_key=key or new_key())

    def parse(self, data: Any) -> R:
        if self.result is None:
            return data
        model: type[BaseModel] = self.result
        return model.model_validate(data)  # type: ignore[return-value]  # R is the model type


def _ts(value: str | int | dt.datetime | dt.date | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _json_default(value: Any) -> Any:
    """Decimals as exact strings, datetimes ISO-8601 (``Z`` when UTC), dates ``YYYY-MM-DD``: the contract's types."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode(body: Any) -> bytes | None:
    return None if body is None else json.dumps(body, default=_json_default).encode()


_JSON = {"Content-Type": "application/json"}


def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class _Calls:
    """Every endpoint as a :class:`Call`; the clients only execute them."""

    # health
    @staticmethod
    def root() -> Call[dict[str, Any]]:
        return Call("GET", "/")

    @staticmethod
    def liveness() -> Call[dict[str, Any]]:
        return Call("GET", "/health/liveness")

    @staticmethod
    def readiness() -> Call[dict[str, Any]]:
        return Call("GET", "/health/readiness", ok_statuses=(503,))

    @staticmethod
    def databases() -> Call[dict[str, Any]]:
        return Call("GET", "/health/databases")

    # market data
    @staticmethod
    def candles(pair: str, period: str, start: Any, end: Any, limit: int | None) -> Call[dict[str, Any]]:
        params = {"pair": pair, "period": period, "start": _ts(start), "end": _ts(end), "limit": limit}
        return Call("GET", "/data/candles", _clean(params))

    @staticmethod
    def series(path: str, pair: str, start: Any, end: Any, limit: int | None) -> Call[dict[str, Any]]:
        return Call("GET", path, _clean({"pair": pair, "start": _ts(start), "end": _ts(end), "limit": limit}))

    @staticmethod
    def orderbook(pair: str, at: Any, depth: int | None, allow_stale: bool) -> Call[dict[str, Any]]:
        params = {"pair": pair, "at": _ts(at), "depth": depth, "allow_stale": "true" if allow_stale else None}
        return Call("GET", "/data/orderbook", _clean(params))

    @staticmethod
    def analytics(kind: str, pair: str | None, period: str | None, limit: int | None) -> Call[dict[str, Any]]:
        return Call("GET", f"/analysis/{seg(kind)}", _clean({"pair": pair, "period": period, "limit": limit}))

    # the /api/v1 contract
    @staticmethod
    def insert(database: str, collection: str, records: Sequence[Mapping[str, Any]]) -> Call[InsertResult]:
        body = {"database": database, "collection": collection, "records": list(records)}
        return Call("POST", "/api/v1/data/insert", body=body, result=InsertResult)

    @staticmethod
    def query(database: str, collection: str, **kw: Any) -> Call[QueryResult]:
        body = _clean({"database": database, "collection": collection, **kw})
        return Call("POST", "/api/v1/data/query", body=body, result=QueryResult, read_only=True)

    @staticmethod
    def find(
        database: str,
        collection: str,
        filter: Mapping[str, Any] | None,
        sort: Mapping[str, int] | None,
        limit: int | None,
        offset: int | None,
        fields: Sequence[str] | None,
    ) -> Call[QueryResult]:
        params = {
            "filter": json.dumps(filter) if filter is not None else None,
            "sort": json.dumps(sort) if sort is not None else None,
            "limit": limit,
            "offset": offset,
            "fields": ",".join(fields) if fields else None,
        }
        return Call("GET", f"/api/v1/{seg(database)}/{seg(collection)}", _clean(params), result=QueryResult)

    @staticmethod
    def update(
        database: str,
        collection: str,
        filter: Mapping[str, Any],
        data: Mapping[str, Any],
        upsert: bool,
        max_rows: int | None = None,
    ) -> Call[UpdateResult]:
        body = _clean({"filter": dict(filter), "data": dict(data), "upsert": upsert, "max_rows": max_rows})
        return Call("PUT", f"/api/v1/{seg(database)}/{seg(collection)}", body=body, result=UpdateResult)

    @staticmethod
    def delete(
        database: str, collection: str, filter: Mapping[str, Any], max_rows: int | None = None
    ) -> Call[DeleteResult]:
        body = _clean({"filter": dict(filter), "max_rows": max_rows})
        return Call("DELETE", f"/api/v1/{seg(database)}/{seg(collection)}", body=body, result=DeleteResult)

    @staticmethod
    def batch(database: str, collection: str, operations: Sequence[Mapping[str, Any]]) -> Call[BatchResult]:
        body = {"operations": [dict(op) for op in operations]}
        return Call("POST", f"/api/v1/{seg(database)}/{seg(collection)}/batch", body=body, result=BatchResult)

    # typed routes
    @staticmethod
    def positions(**params: Any) -> Call[PositionList]:
        return Call("GET", "/positions", _clean(params), result=PositionList)

    @staticmethod
    def open_positions(**params: Any) -> Call[PositionList]:
        return Call("GET", "/positions/open", _clean(params), result=PositionList)

    @staticmethod
    def position_history(**params: Any) -> Call[PositionList]:
        return Call("GET", "/positions/history", _clean({k: _ts(v) for k, v in params.items()}), result=PositionList)

    @staticmethod
    def position(position_id: str) -> Call[Position]:
        return Call("GET", f"/positions/{seg(position_id)}", result=Position)

    @staticmethod
    def daily_pnl(from_: Any, to: Any) -> Call[DailyPnlList]:
        return Call("GET", "/pnl/daily", _clean({"from": _ts(from_), "to": _ts(to)}), result=DailyPnlList)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return min(float(value), MAX_RETRY_AFTER_S) if value is not None else None
    except ValueError:
        return None


def _outcome(call: Call[R], resp: httpx.Response) -> R:
    if resp.status_code < 400 or resp.status_code in call.ok_statuses:
        return call.parse(resp.json())
    try:
        body = resp.json()
    except ValueError:
        body = resp.text[:500]
    raise error_for(resp.status_code, body, _retry_after(resp))


def _wait(backoff: float, max_backoff: float) -> Any:
    expo = wait_exponential_jitter(multiplier=backoff, max=max_backoff)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RateLimited | KeyInUse) and exc.retry_after is not None:
            return exc.retry_after
        return float(expo(state))

    return wait


# What may be sent again: anything a read got, and for a write with its key also a lost answer and
# "key in use" (the first attempt still running). A write without a key: nothing.
RETRYABLE = (RateLimited, ServerError, TransportError, NoResponse)
RETRYABLE_KEYED = (*RETRYABLE, KeyInUse)


def may_retry(call: Call[Any], exc: BaseException) -> bool:
    if call.safe:
        return isinstance(exc, RETRYABLE)
    if call.idempotency_key is None:
        return False
    return isinstance(exc, RETRYABLE_KEYED)


class _Base:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._wait = _wait(backoff, max_backoff)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout

    def _retry_kwargs(self, call: Call[Any]) -> dict[str, Any]:
        return {
            "retry": retry_if_exception(lambda exc: may_retry(call, exc)),
            "stop": stop_after_attempt(self.retries + 1),
            "wait": self._wait,
            "reraise": True,
        }

    @staticmethod
    def _headers_for(call: Call[Any]) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        if call.body is not None:
            headers.update(_JSON)
        if call.idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = call.idempotency_key
        return headers or None

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}({self.base_url!r})"


class DMClient(_Base):
    """Synchronous client. ``with DMClient(url, token=...) as c: c.open_positions()``."""

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None, **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call[R]) -> R:
        try:
            resp = self._http.request(
                call.method,
                call.path,
                params=call.params or None,
                content=_encode(call.body),
                headers=self._headers_for(call),
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TransportError(f"cannot reach {self.base_url}: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # sent, maybe applied: only a read or a keyed write is sent again
            raise NoResponse(f"no answer from {self.base_url}: {type(exc).__name__}") from exc
        return _outcome(call, resp)

    def run(self, call: Call[R]) -> R:
        """Send ``call``, retrying what :func:`may_retry` allows; errors carry the call's idempotency key."""
        try:
            for attempt in Retrying(**self._retry_kwargs(call)):
                with attempt:
                    return self._send(call)
        except DMError as exc:
            exc.idempotency_key = call.idempotency_key
            raise
        raise DMError("unreachable")  # pragma: no cover

    # health
    def root(self) -> dict[str, Any]:
        return self.run(_Calls.root())

    def liveness(self) -> dict[str, Any]:
        return self.run(_Calls.liveness())

    def readiness(self) -> dict[str, Any]:
        """The readiness body, also when it answers 503 (``status`` unhealthy, ``state`` not_ready)."""
        return self.run(_Calls.readiness())

    def databases(self) -> dict[str, Any]:
        return self.run(_Calls.databases())

    # market data
    def candles(
        self, pair: str, period: str = "1m", start: Any = None, end: Any = None, limit: int | None = None
    ) -> dict[str, Any]:
        return self.run(_Calls.candles(pair, period, start, end, limit))

    def trades(self, pair: str, start: Any = None, end: Any = None, limit: int | None = None) -> dict[str, Any]:
        return self.run(_Calls.series("/data/trades", pair, start, end, limit))

    def funding(self, pair: str, start: Any = None, end: Any = None, limit: int | None = None) -> dict[str, Any]:
        return self.run(_Calls.series("/data/funding", pair, start, end, limit))

    def orderbook(
        self, pair: str, at: Any = None, depth: int | None = None, allow_stale: bool = False
    ) -> dict[str, Any]:
        """The order book valid at ``at`` (default now): top ``depth`` levels as exact decimal strings.

        When no valid book exists at ``at`` (a continuity break, the wait for a snapshot, the live
        edge not rebuilt yet) this raises :class:`~dm_client.errors.NotFound` whose message names the
        span without a book and its reason; it never hands back an old book as current.
        ``allow_stale=True`` returns the last valid book before ``at`` instead, with ``stale: true``,
        its ``age_ms`` and the ``invalid`` span: check both before acting on it.
        """
        return self.run(_Calls.orderbook(pair, at, depth, allow_stale))

    def analytics(
        self, kind: str, pair: str | None = None, period: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        return self.run(_Calls.analytics(kind, pair, period, limit))

    # contract (writes: ``idempotency_key`` is generated when not given; see the module docstring)
    def insert(
        self,
        database: str,
        collection: str,
        records: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> InsertResult:
        return self.run(_Calls.insert(database, collection, records).keyed(idempotency_key))

    def insert_klines(
        self, interval: str, records: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> InsertResult:
        return self.insert("mongodb", f"klines_{interval}", records, idempotency_key=idempotency_key)

    def query(self, database: str, collection: str, **kw: Any) -> QueryResult:
        return self.run(_Calls.query(database, collection, **kw))

    def find(
        self,
        database: str,
        collection: str,
        filter: Mapping[str, Any] | None = None,
        sort: Mapping[str, int] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> QueryResult:
        return self.run(_Calls.find(database, collection, filter, sort, limit, offset, fields))

    def latest_kline(self, symbol: str, interval: str) -> dict[str, Any] | None:
        """The newest stored kline of ``symbol`` (what an extractor resumes from), or None."""
        page = self.find("mongodb", f"klines_{interval}", {"symbol": symbol}, {"close_time": -1}, 1)
        return page.data[0] if page.data else None

    def update(
        self,
        database: str,
        collection: str,
        filter: Mapping[str, Any],
        data: Mapping[str, Any],
        upsert: bool = False,
        *,
        max_rows: int | None = None,
        idempotency_key: str | None = None,
    ) -> UpdateResult:
        return self.run(_Calls.update(database, collection, filter, data, upsert, max_rows).keyed(idempotency_key))

    def delete(
        self,
        database: str,
        collection: str,
        filter: Mapping[str, Any],
        *,
        max_rows: int | None = None,
        idempotency_key: str | None = None,
    ) -> DeleteResult:
        return self.run(_Calls.delete(database, collection, filter, max_rows).keyed(idempotency_key))

    def batch(
        self,
        database: str,
        collection: str,
        operations: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> BatchResult:
        return self.run(_Calls.batch(database, collection, operations).keyed(idempotency_key))

    def upsert_position(
        self, filter: Mapping[str, Any], data: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> UpdateResult:
        return self.update("mysql", "positions", filter, data, upsert=True, idempotency_key=idempotency_key)

    def close_position(
        self, symbol: str, position_side: str, fields: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> UpdateResult:
        """Close the open position of ``symbol``/``position_side`` (``status: closed`` plus ``fields``)."""
        flt = {"symbol": symbol, "position_side": position_side, "status": "open"}
        data = {"$set": {**fields, "status": "closed"}}
        return self.update("mysql", "positions", flt, data, upsert=False, idempotency_key=idempotency_key)

    def upsert_daily_pnl(
        self, date: str | dt.date, daily_pnl: Any, updated_at: Any = None, *, idempotency_key: str | None = None
    ) -> UpdateResult:
        day = _ts(date)
        data = _clean({"date": day, "daily_pnl": str(daily_pnl), "updated_at": _ts(updated_at)})
        return self.update("mysql", "daily_pnl", {"date": day}, data, upsert=True, idempotency_key=idempotency_key)

    def positions(self, **params: Any) -> PositionList:
        return self.run(_Calls.positions(**params))

    def open_positions(self, **params: Any) -> PositionList:
        return self.run(_Calls.open_positions(**params))

    def position_history(self, **params: Any) -> PositionList:
        return self.run(_Calls.position_history(**params))

    def position(self, position_id: str) -> Position:
        return self.run(_Calls.position(position_id))

    def daily_pnl(self, from_: Any = None, to: Any = None) -> DailyPnlList:
        return self.run(_Calls.daily_pnl(from_, to))


class AsyncDMClient(_Base):
    """Asynchronous client with the same methods as :class:`DMClient`, awaited."""

    def __init__(self, base_url: str, *, transport: httpx.AsyncBaseTransport | None = None, **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call[R]) -> R:
        try:
            resp = await self._http.request(
                call.method,
                call.path,
                params=call.params or None,
                content=_encode(call.body),
                headers=self._headers_for(call),
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TransportError(f"cannot reach {self.base_url}: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # sent, maybe applied: only a read or a keyed write is sent again
            raise NoResponse(f"no answer from {self.base_url}: {type(exc).__name__}") from exc
        return _outcome(call, resp)

    async def run(self, call: Call[R]) -> R:
        try:
            async for attempt in AsyncRetrying(**self._retry_kwargs(call)):
                with attempt:
                    return await self._send(call)
        except DMError as exc:
            exc.idempotency_key = call.idempotency_key
            raise
        raise DMError("unreachable")  # pragma: no cover

    async def root(self) -> dict[str, Any]:
        return await self.run(_Calls.root())

    async def liveness(self) -> dict[str, Any]:
        return await self.run(_Calls.liveness())

    async def readiness(self) -> dict[str, Any]:
        return await self.run(_Calls.readiness())

    async def databases(self) -> dict[str, Any]:
        return await self.run(_Calls.databases())

    async def candles(
        self, pair: str, period: str = "1m", start: Any = None, end: Any = None, limit: int | None = None
    ) -> dict[str, Any]:
        return await self.run(_Calls.candles(pair, period, start, end, limit))

    async def trades(self, pair: str, start: Any = None, end: Any = None, limit: int | None = None) -> dict[str, Any]:
        return await self.run(_Calls.series("/data/trades", pair, start, end, limit))

    async def funding(self, pair: str, start: Any = None, end: Any = None, limit: int | None = None) -> dict[str, Any]:
        return await self.run(_Calls.series("/data/funding", pair, start, end, limit))

    async def orderbook(
        self, pair: str, at: Any = None, depth: int | None = None, allow_stale: bool = False
    ) -> dict[str, Any]:
        """The order book valid at ``at`` (default now): top ``depth`` levels as exact decimal strings.

        When no valid book exists at ``at`` (a continuity break, the wait for a snapshot, the live
        edge not rebuilt yet) this raises :class:`~dm_client.errors.NotFound` whose message names the
        span without a book and its reason; it never hands back an old book as current.
        ``allow_stale=True`` returns the last valid book before ``at`` instead, with ``stale: true``,
        its ``age_ms`` and the ``invalid`` span: check both before acting on it.
        """
        return await self.run(_Calls.orderbook(pair, at, depth, allow_stale))

    async def analytics(
        self, kind: str, pair: str | None = None, period: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        return await self.run(_Calls.analytics(kind, pair, period, limit))

    async def insert(
        self,
        database: str,
        collection: str,
        records: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> InsertResult:
        return await self.run(_Calls.insert(database, collection, records).keyed(idempotency_key))

    async def insert_klines(
        self, interval: str, records: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None
    ) -> InsertResult:
        return await self.insert("mongodb", f"klines_{interval}", records, idempotency_key=idempotency_key)

    async def query(self, database: str, collection: str, **kw: Any) -> QueryResult:
        return await self.run(_Calls.query(database, collection, **kw))

    async def find(
        self,
        database: str,
        collection: str,
        filter: Mapping[str, Any] | None = None,
        sort: Mapping[str, int] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> QueryResult:
        return await self.run(_Calls.find(database, collection, filter, sort, limit, offset, fields))

    async def latest_kline(self, symbol: str, interval: str) -> dict[str, Any] | None:
        """The newest stored kline of ``symbol`` (what an extractor resumes from), or None."""
        page = await self.find("mongodb", f"klines_{interval}", {"symbol": symbol}, {"close_time": -1}, 1)
        return page.data[0] if page.data else None

    async def update(
        self,
        database: str,
        collection: str,
        filter: Mapping[str, Any],
        data: Mapping[str, Any],
        upsert: bool = False,
        *,
        max_rows: int | None = None,
        idempotency_key: str | None = None,
    ) -> UpdateResult:
        return await self.run(
            _Calls.update(database, collection, filter, data, upsert, max_rows).keyed(idempotency_key)
        )

    async def delete(
        self,
        database: str,
        collection: str,
        filter: Mapping[str, Any],
        *,
        max_rows: int | None = None,
        idempotency_key: str | None = None,
    ) -> DeleteResult:
        return await self.run(_Calls.delete(database, collection, filter, max_rows).keyed(idempotency_key))

    async def batch(
        self,
        database: str,
        collection: str,
        operations: Sequence[Mapping[str, Any]],
        *,
        idempotency_key: str | None = None,
    ) -> BatchResult:
        return await self.run(_Calls.batch(database, collection, operations).keyed(idempotency_key))

    async def upsert_position(
        self, filter: Mapping[str, Any], data: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> UpdateResult:
        return await self.update("mysql", "positions", filter, data, upsert=True, idempotency_key=idempotency_key)

    async def close_position(
        self, symbol: str, position_side: str, fields: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> UpdateResult:
        """Close the open position of ``symbol``/``position_side`` (``status: closed`` plus ``fields``)."""
        flt = {"symbol": symbol, "position_side": position_side, "status": "open"}
        data = {"$set": {**fields, "status": "closed"}}
        return await self.update("mysql", "positions", flt, data, upsert=False, idempotency_key=idempotency_key)

    async def upsert_daily_pnl(
        self, date: str | dt.date, daily_pnl: Any, updated_at: Any = None, *, idempotency_key: str | None = None
    ) -> UpdateResult:
        day = _ts(date)
        data = _clean({"date": day, "daily_pnl": str(daily_pnl), "updated_at": _ts(updated_at)})
        return await self.update(
            "mysql", "daily_pnl", {"date": day}, data, upsert=True, idempotency_key=idempotency_key
        )

    async def positions(self, **params: Any) -> PositionList:
        return await self.run(_Calls.positions(**params))

    async def open_positions(self, **params: Any) -> PositionList:
        return await self.run(_Calls.open_positions(**params))

    async def position_history(self, **params: Any) -> PositionList:
        return await self.run(_Calls.position_history(**params))

    async def position(self, position_id: str) -> Position:
        return await self.run(_Calls.position(position_id))

    async def daily_pnl(self, from_: Any = None, to: Any = None) -> DailyPnlList:
        return await self.run(_Calls.daily_pnl(from_, to))
