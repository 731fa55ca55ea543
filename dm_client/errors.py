"""Typed exceptions for every error the Market Data Manager API answers (and for not reaching it)."""

from __future__ import annotations

from typing import Any


class DMError(Exception):
    """Base class: ``status`` (None when no response), ``message`` (the API's words), ``detail`` (raw)."""

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(f"{status} {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.detail = detail
        # The write's Idempotency-Key (None for reads): send it again to retry this same write.
        self.idempotency_key: str | None = None


class InvalidRequest(DMError):
    """400/405/413/422: the request itself is wrong (a filter, a field, a limit); retrying will not help."""


class Unauthorized(DMError):
    """401: no token, or not a valid one."""


class Forbidden(DMError):
    """403: the token lacks the scope, or writes are disabled on the server."""


class NotFound(DMError):
    """404: unknown collection, position, pair, …"""


class Conflict(DMError):
    """409: the write would break a unique key (e.g. a second open position for a symbol and side)."""


class KeyInUse(Conflict):
    """409: the first request with this Idempotency-Key is still running; retried after ``Retry-After``."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimited(DMError):
    """429: retried with backoff (honouring ``Retry-After``) before this is raised."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(DMError):
    """5xx: retried with backoff before this is raised."""


class Unavailable(ServerError):
    """503: a store (or Dagster, for backfills) is unavailable; the message names it."""


class TransportError(DMError):
    """The API could not be reached (connection refused, DNS, …); retried before this is raised."""


class NoResponse(DMError):
    """The request was sent but no answer came (read timeout, dropped connection).

    The server may have applied it. Reads, and writes with their ``Idempotency-Key`` (every
    write this client sends), are retried; this is raised when the retries ran out.
    """


def error_for(status: int, body: Any, retry_after: float | None = None) -> DMError:
    """The typed exception for an HTTP error response."""
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):
        message = "; ".join(
            f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    else:
        message = str(detail)
    kw: dict[str, Any] = {"status": status, "detail": detail}
    if status == 401:
        return Unauthorized(message, **kw)
    if status == 403:
        return Forbidden(message, **kw)
    if status == 404:
        return NotFound(message, **kw)
    if status == 409:
        first = detail[0] if isinstance(detail, list) and detail and isinstance(detail[0], dict) else {}
        if first.get("type") == "idempotency_key_in_flight":
            return KeyInUse(message, retry_after=retry_after, **kw)
        return Conflict(message, **kw)
    if status == 429:
        return RateLimited(message, retry_after=retry_after, **kw)
    if status == 503:
        return Unavailable(message, **kw)
    if status >= 500:
        return ServerError(message, **kw)
    return InvalidRequest(message, **kw)
