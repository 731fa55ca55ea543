"""Large JSON bodies parsed off the event loop, in pieces, so ``/health/liveness`` is never held up.

Why: the event loop answers the liveness probe, and CPython runs one thread at a time (the
GIL). FastAPI parses a JSON body with ``json.loads`` *on the event loop*: the largest body we
accept (4 MiB, a 5,000-record kline insert) is one C call of ~15 ms that holds both the loop
and the interpreter lock, and a probe arriving meanwhile waits it out (issue 20's liveness
bench measured p99 ×22 under such bodies).

What: :class:`BodyRoute` (the ``route_class`` of every router with body routes) hands its
handler an :class:`OffLoopRequest`, whose ``json()`` parses a body over
:data:`INLINE_JSON_BYTES` with :func:`loads_in_pieces` in a worker thread. The loop stays
free, and the thread never holds the interpreter lock for more than one record: the
interpreter hands the lock to the loop between pieces (every ``sys.setswitchinterval``).

:func:`loads_in_pieces` is ``json.loads`` (same decoder, same grammar, same values, same
errors), walked by hand over the top two levels: ``{"records": [r0, r1, …]}`` costs one C
call per record instead of one for the body. Anything malformed is handed back to
``json.loads`` so that the error, and FastAPI's answer to it, are exactly what they were.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from json.decoder import JSONDecodeError
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

# Bodies up to this size are parsed inline (well under a millisecond); larger ones in a thread, in pieces.
INLINE_JSON_BYTES = 64 * 1024
# Containers walked piece by piece: the body (depth 0) and its members (depth 1, e.g. ``records``).
# Deeper values (one record) are one C call each.
WALK_DEPTH = 2

_DECODER = json.JSONDecoder()
# The decoder's own C scanner (one value from an index) and string reader; typeshed lists neither.
_scan_once: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_WS = re.compile(r"[ \t\n\r]*")  # json.decoder.WHITESPACE: the JSON whitespace


def _skip(s: str, idx: int) -> int:
    """The index after the whitespace at ``idx`` (the pattern matches everywhere, if only nothing)."""
    m = _WS.match(s, idx)
    return m.end() if m else idx


class _Malformed(Exception):
    """Not valid JSON: :func:`loads_in_pieces` lets ``json.loads`` raise its own error instead."""


def _value(s: str, idx: int, depth: int) -> tuple[Any, int]:
    ch = s[idx : idx + 1]
    if depth < WALK_DEPTH and ch == "{":
        return _object(s, idx + 1, depth + 1)
    if depth < WALK_DEPTH and ch == "[":
        return _array(s, idx + 1, depth + 1)
    try:
        return _scan_once(s, idx)  # one value: one C call
    except StopIteration:
        raise _Malformed from None


def _after_item(s: str, idx: int, close: str) -> tuple[bool, int]:
    """Past an item of an object or array: (True, after ``close``) or (False, at the next item)."""
    idx = _skip(s, idx)
    ch = s[idx : idx + 1]
    if ch == close:
        return True, idx + 1
    if ch != ",":
        raise _Malformed
    return False, _skip(s, idx + 1)


def _object(s: str, idx: int, depth: int) -> tuple[dict[str, Any], int]:
    """The members after ``{``, as the C scanner reads them (duplicate keys: the last wins)."""
    out: dict[str, Any] = {}
    idx = _skip(s, idx)
    if s[idx : idx + 1] == "}":
        return out, idx + 1
    while True:
        if s[idx : idx + 1] != '"':
            raise _Malformed
        key, idx = scanstring(s, idx + 1, True)
        idx = _skip(s, idx)
        if s[idx : idx + 1] != ":":
            raise _Malformed
        out[key], idx = _value(s, _skip(s, idx + 1), depth)
        done, idx = _after_item(s, idx, "}")
        if done:
            return out, idx


def _array(s: str, idx: int, depth: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    idx = _skip(s, idx)
    if s[idx : idx + 1] == "]":
        return out, idx + 1
    while True:
        item, idx = _value(s, idx, depth)
        out.append(item)
        done, idx = _after_item(s, idx, "]")
        if done:
            return out, idx


def loads_in_pieces(body: bytes) -> Any:
    """``json.loads(body)``, with no C call longer than one value below the top two levels.

    Equal results by construction: the same decoder reads every value and key, and the
    structure between them follows the C scanner's grammar. On anything it cannot read,
    ``json.loads`` runs on the whole body and raises (or, were it ever to disagree, answers).
    """
    s = body.decode(json.detect_encoding(body), "surrogatepass")
    try:
        obj, end = _value(s, _skip(s, 0), 0)
        if _skip(s, end) != len(s):
            raise _Malformed
        return obj
    except (_Malformed, JSONDecodeError):
        return json.loads(body)  # raises json.loads's own error, position and message


class OffLoopRequest(Request):
    """A request whose large JSON body is parsed in a worker thread, in pieces (module docstring)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) <= INLINE_JSON_BYTES:
                self._json = json.loads(body)
            else:
                self._json = await run_in_threadpool(loads_in_pieces, body)
        return self._json


class BodyRoute(APIRoute):
    """``route_class`` of every router with body routes: its handler reads an :class:`OffLoopRequest`.

    ``tests/test_json_body.py`` checks that no route with a body is left on FastAPI's default.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def off_loop(request: Request) -> Response:
            return await handler(OffLoopRequest(request.scope, request.receive))

        return off_loop


__all__ = ["INLINE_JSON_BYTES", "BodyRoute", "OffLoopRequest", "loads_in_pieces"]
