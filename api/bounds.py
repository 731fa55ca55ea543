"""Bounded input before any work: the request body and the query string.

:class:`RequestBounds` is pure ASGI and sits in front of every route, so a route added later
(another router, another file) is covered without doing anything:

* **Body size.** A ``Content-Length`` over ``DM_API_MAX_BODY_BYTES`` (4 MiB by default: a
  5,000-record kline insert, the largest batch, is 2.9 MB) is answered 413 at once, naming the
  limit, before a byte of the body is read. A chunked body is counted as it arrives and
  refused the moment it passes the limit. Nothing is parsed before that.
* **Query string** over :data:`MAX_QUERY_BYTES`: 414, naming the limit.

What a body may *contain* is checked field by field where the field is known
(``api/contract/filters.py``: string lengths before any regex, lone surrogates, numbers that fit
their column), so that one bad record of a batch fails alone; a body that cannot be parsed at
all is a 400 saying why (``api/errors.py``).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_QUERY_BYTES = 16 * 1024


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestBounds:
    """Pure ASGI middleware: the limits above, checked before the application sees the request."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            msg = f"the query string is longer than the limit of {MAX_QUERY_BYTES} bytes; send a body (POST) instead"
            await error_response(414, ["query"], msg, "too_long")(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._too_large(scope, receive, send, f"Content-Length {declared} is over")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, "the body is over")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, what: str) -> None:
        msg = f"{what} the body size limit of {self.max_body_bytes} bytes (DM_API_MAX_BODY_BYTES); split the request"
        await error_response(413, ["body"], msg, "too_large", {"Connection": "close"})(scope, receive, send)


__all__ = ["DEFAULT_MAX_BODY_BYTES", "MAX_QUERY_BYTES", "RequestBounds"]
