"""The API's errors and their handlers: one error type, one body shape, one place.

Every error the API answers on purpose is an :class:`ApiError` (or a subclass that only fixes
its defaults: :class:`AuthError`, :class:`UpstreamError`, ``api.params.ParamError``). Each
answers ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`` — FastAPI's own
validation shape — so a client reads every 4xx/5xx the same way, and ``loc`` names the
parameter, header or upstream at fault.

Store failures get their own handlers here too: a store that is down is a 503 to retry; a
statement the metadata database refused is a 500, because a 5xx is always our bug, never
the client's input (input is validated before any store is touched). Anything else that
escapes a route is logged with its traceback and answered as a 500 in the same shape, never
as a bare text page (:class:`Unhandled`).

``api/app.py`` only calls :func:`install` and adds :class:`Unhandled`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pymongo.errors import ConnectionFailure, PyMongoError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# How much of a client's value an error message may echo (a 1 MB string is not repeated back).
ECHO_CHARS = 120


class ApiError(Exception):
    """An error the API answers on purpose: ``status``, ``loc`` (where), ``message`` (why), ``kind`` (type).

    ``headers`` are added to the response (``WWW-Authenticate``, ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        loc: Sequence[str | int] = ("request",),
        kind: str = "value_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.loc = list(loc)
        self.kind = kind
        self.headers = dict(headers or {})


class AuthError(ApiError):
    """401 (no token, or not a valid one) or 403 (scope missing, writes disabled); never shows the token."""

    def __init__(self, status: int, message: str) -> None:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        super().__init__(status, message, loc=("header", "Authorization"), kind="auth", headers=headers)


class UpstreamError(ApiError):
    """A service this API depends on is unreachable (503) or refused the request (502)."""

    def __init__(self, status: int, message: str, *, upstream: str = "dagster") -> None:
        super().__init__(status, message, loc=(upstream,), kind="upstream")


class StoredAnswer(Exception):
    """A completed request's stored answer (``api/idempotency.py``): sent as it was the first time."""

    def __init__(self, status: int, body: bytes, *, key: str) -> None:
        super().__init__(f"replay of idempotency key {key[:40]!r}")
        self.status = status
        self.body = body


def error_body(loc: Sequence[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"detail": [{"loc": list(loc), "msg": msg, "type": kind}]}


def error_response(
    status: int, loc: Sequence[str | int], msg: str, kind: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(loc, msg, kind), headers=dict(headers or {}))


def echo(value: Any) -> str:
    """A client's value shortened for a message (``repr``, at most :data:`ECHO_CHARS` characters)."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 1] + "…"


def _text(value: str) -> str:
    """``value`` as UTF-8-safe text: a lone surrogate becomes ``\\ud800`` rather than a 500 in the encoder."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _short_inputs(errors: Sequence[Any]) -> bytes:
    """FastAPI's validation errors with echoed inputs cut short (a 1 MB string is not sent back) and UTF-8 safe."""
    out: list[Any] = []
    for err in errors:
        item = dict(err)
        value = item.get("input")
        if isinstance(value, str):
            item["input"] = _text(value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "…")
        elif isinstance(value, dict | list):
            item["input"] = _text(echo(value)) if len(repr(value)) > ECHO_CHARS else value
        item["loc"] = [_text(x) if isinstance(x, str) else x for x in item.get("loc", ())]
        item["msg"] = _text(str(item.get("msg", "")))
        out.append(item)
    encoded = jsonable_encoder(out)
    try:  # orjson writes NaN/Infinity inputs as null (JSON has neither)
        return orjson.dumps({"detail": encoded})
    except TypeError:  # text deeper inside (a small dict input, ctx) that is not UTF-8: echo it escaped
        encoded = [{**e, "input": _text(repr(e.get("input"))), "ctx": None} for e in encoded]
        return orjson.dumps({"detail": encoded}, default=str)


def install(app: FastAPI) -> None:
    """Register every handler on ``app``."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.loc, exc.message, exc.kind, exc.headers)

    @app.exception_handler(StoredAnswer)
    async def _replay(_: Request, exc: StoredAnswer) -> Response:
        return Response(
            exc.body, status_code=exc.status, media_type="application/json", headers={"Idempotent-Replayed": "true"}
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's words for a body json.loads raised on (not a syntax error: those are 422s).
            cause = exc.__cause__
            why = f"{type(cause).__name__}: {str(cause)[:200]}" if cause is not None else "unknown"
            return error_response(400, ["body"], f"the body cannot be parsed as JSON ({why})", "json_invalid")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return Response(_short_inputs(exc.errors()), status_code=422, media_type="application/json")

    @app.exception_handler(ConnectionFailure)
    async def _mongo_down(_: Request, exc: ConnectionFailure) -> JSONResponse:
        log.warning("MongoDB unavailable: %s", exc)
        return error_response(503, ["mongodb"], "MongoDB is unavailable; retry later", "unavailable")

    @app.exception_handler(PyMongoError)
    async def _mongo_error(_: Request, exc: PyMongoError) -> JSONResponse:
        log.error("MongoDB error: %s", exc)
        return error_response(502, ["mongodb"], f"MongoDB error: {type(exc).__name__}", "store_error")

    @app.exception_handler(DBAPIError)
    async def _meta_error(_: Request, exc: DBAPIError) -> JSONResponse:
        from api.routes.health import missing_table_hint  # the readiness route owns the schema check

        log.warning("metadata database error: %s", exc)
        hint = missing_table_hint(exc)
        if hint is not None:
            return error_response(503, ["metadata"], hint, "schema_missing")
        if isinstance(exc, OperationalError | InterfaceError):  # lost connection, lock timeout, deadlock
            return error_response(503, ["metadata"], "the metadata database is unavailable; retry later", "unavailable")
        # The database refused this statement (data, integrity, syntax): retrying cannot help.
        return error_response(
            500, ["metadata"], f"the metadata database refused the request ({type(exc).__name__})", "store_error"
        )


class Unhandled:
    """Pure ASGI: an exception no handler took is logged with its traceback and answered as a JSON 500.

    Starlette's own last-resort handler answers too, but then re-raises, and the server drops
    the client's keep-alive connection: its next request fails with a reset. This answers and
    keeps the connection. After a response has started nothing can be answered: re-raised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            if started:
                raise
            msg = f"internal error ({type(exc).__name__}); it is logged"
            await error_response(500, ["server"], msg, "internal")(scope, receive, send)


__all__ = [
    "ApiError",
    "AuthError",
    "StoredAnswer",
    "Unhandled",
    "UpstreamError",
    "echo",
    "error_body",
    "error_response",
    "install",
]
