"""Service identity for FastAPI: who is calling, may they, and the write audit trail.

Routes ask for a scope (``Depends(require(SCOPE))``, or :func:`authorize` when the dataset in
the request decides the scope); the decision rules are plain functions in
``api/contract/auth.py``. Every decision is counted in ``/metrics`` as
``dm_api_auth_total{service, route, decision, passed}``; what ``DM_AUTH_MODE=audit`` lets
pass is also logged, at most once a minute per service, route and reason, so a migration's
log stays readable while its counters stay exact.

:class:`WriteAuditMiddleware` records every write request under ``/api/v1`` and
``/backfill/start`` in ``api_write_audit`` after the answer went out: the service (verified
or not), the route, the target and the status.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.contract.auth import (
    ANONYMOUS,
    DEFAULT_SERVICE_SCOPES,
    INVALID_NAME,
    SERVICE_HEADER,
    Decision,
    Identity,
    decide,
    identify,
)
from api.deps import state
from api.errors import AuthError
from dm_resources.metadata.write_audit import WriteRecord, record_write

if TYPE_CHECKING:
    from api.deps import AppState

log = logging.getLogger(__name__)

_STATE_KEY = "dm_identity"
LOG_EVERY_S = 60.0
_logged: dict[tuple[str, str, str], float] = {}
_logged_lock = threading.Lock()
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
AUDITED_PREFIXES = ("/api/v1/", "/backfill/start")
# Path parameters that name what a write touched, in the order they are joined into ``target``.
TARGET_PARAMS = ("database", "collection", "position_id", "date_value", "day", "as_of_ms", "strategy_id")


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-token") or None


def caller(request: Request) -> Identity:
    """The request's identity (computed once per request)."""
    found = getattr(request.state, _STATE_KEY, None)
    if isinstance(found, Identity):
        return found
    st = state(request)
    ident = identify(st.tokens, request.headers.get(SERVICE_HEADER), _bearer(request))
    setattr(request.state, _STATE_KEY, ident)
    return ident


def _service_label(st: AppState, ident: Identity) -> str:
    """A bounded label: configured or known service names, token labels, else ``other``."""
    name = ident.name
    if name in st.tokens.services or name in DEFAULT_SERVICE_SCOPES or name in (ANONYMOUS, INVALID_NAME, "api-token"):
        return name
    return "other"


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", None) or "<unmatched>")


def _note(request: Request, st: AppState, ident: Identity, decision: Decision) -> None:
    route = _route(request)
    service = _service_label(st, ident)
    if st.metrics is not None:
        st.metrics.auth.labels(service, route, decision.reason, "true" if decision.allowed else "false").inc()
    if decision.allowed and decision.reason not in ("verified", "off", "open"):
        key = (service, route, decision.reason)
        now = time.monotonic()
        with _logged_lock:
            last = _logged.get(key)
            if last is not None and now - last < LOG_EVERY_S:
                return
            if len(_logged) > 10_000:
                _logged.clear()
            _logged[key] = now
        log.warning(
            "auth audit: passing %s %s from service=%s (%s): %s",
            request.method,
            route,
            service,
            decision.reason,
            decision.message or "no token configured",
        )


def authorize(request: Request, scope: str, *, open_when_unset: bool = False) -> Identity:
    """Raise :class:`AuthError` unless the caller may use ``scope`` (under ``DM_AUTH_MODE``); return who it is."""
    st = state(request)
    ident = caller(request)
    decision = decide(st.tokens, ident, scope, st.settings.auth_mode, open_when_unset=open_when_unset)
    _note(request, st, ident, decision)
    if not decision.allowed:
        raise AuthError(decision.status, decision.message)
    return ident


def require(scope: str, *, open_when_unset: bool = False) -> Callable[[Request], Awaitable[Identity]]:
    """A dependency that authorises ``scope`` and returns the caller."""

    async def dependency(request: Request) -> Identity:
        return authorize(request, scope, open_when_unset=open_when_unset)

    dependency.__name__ = f"require_{scope.replace(':', '_').replace('*', 'all')}"
    return dependency


class WriteAuditMiddleware:
    """Records each write request in ``api_write_audit`` once its answer has been sent.

    Pure ASGI, so the row is written after the last byte left; a failure to record is logged
    and never turns into a failed write (the write itself already happened or not).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") not in WRITE_METHODS or not path.startswith(AUDITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            await self._record(scope, status["code"])

    async def _record(self, scope: Scope, status: int) -> None:
        app: Any = scope.get("app")
        st: AppState | None = getattr(getattr(app, "state", None), "dm", None)
        if st is None:
            return
        ident = (scope.get("state") or {}).get(_STATE_KEY)
        if not isinstance(ident, Identity):  # refused before anyone asked who it was (a 404, a 422 on the body)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            token = None
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip() or None
            ident = identify(st.tokens, headers.get(SERVICE_HEADER.lower()), token or headers.get("x-api-token"))
        route = scope.get("route")
        params = scope.get("path_params") or {}
        target = "/".join(str(params[p]) for p in TARGET_PARAMS if p in params) or None
        rec = WriteRecord(
            at=dt.datetime.now(dt.UTC),
            service=ident.recorded_as,
            verified=ident.verified,
            auth_mode=st.settings.auth_mode,
            method=str(scope.get("method")),
            route=str(getattr(route, "path", None) or scope.get("path", ""))[:255],
            target=target,
            status=status,
        )
        try:
            await anyio.to_thread.run_sync(record_write, st.meta, rec)
        except Exception as exc:  # the trail must never fail the request it describes
            log.warning("write audit not recorded (%s %s %s): %s", rec.method, rec.route, rec.status, exc)


__all__ = ["WriteAuditMiddleware", "authorize", "caller", "require"]
