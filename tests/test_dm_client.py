"""dm_client's retry policy and error mapping, against a scripted HTTP server on loopback.

The server answers the statuses a test queues (429 with Retry-After, 5xx, 4xx) and counts
requests, so each test checks how many times the client asked: retried on 429/5xx only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from api.testing import serve
from dm_client import (
    AsyncDMClient,
    Conflict,
    DMClient,
    Forbidden,
    InvalidRequest,
    NoResponse,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unavailable,
)
from dm_resources.embedded import free_port


class Script:
    def __init__(self) -> None:
        self.queue: deque[tuple[int, dict[str, str]]] = deque()
        self.hits = 0
        self.auth: list[str | None] = []

    def then(self, status: int, headers: dict[str, str] | None = None, times: int = 1) -> Script:
        for _ in range(times):
            self.queue.append((status, headers or {}))
        return self


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    def anything(path: str, request: Any = None) -> JSONResponse:
        script.hits += 1
        status, headers = script.queue.popleft() if script.queue else (200, {})
        if status >= 400:
            body = {"detail": [{"loc": ["query", "x"], "msg": f"scripted {status}", "type": "t"}]}
            return JSONResponse(body, status_code=status, headers=headers)
        return JSONResponse({"status": "ok"})

    with serve(app) as url:
        yield url, script


def client(url: str) -> DMClient:
    return DMClient(url, token="tok-0123456789abcdef", retries=3, backoff=0.01, max_backoff=0.05)


def test_429_and_5xx_are_retried_then_succeed(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.then(429, {"Retry-After": "0"}).then(502).then(503)
    with client(url) as c:
        assert c.liveness() == {"status": "ok"}
    assert script.hits == 4


def test_retries_are_bounded_and_raise_the_typed_error(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.then(503, times=10)
    with client(url) as c, pytest.raises(Unavailable) as info:
        c.liveness()
    assert script.hits == 4 and info.value.status == 503 and "scripted 503" in info.value.message
    script.queue.clear()
    script.hits = 0
    script.then(500, times=10)
    with client(url) as c, pytest.raises(ServerError):
        c.liveness()
    assert script.hits == 4
    script.queue.clear()
    script.hits = 0
    script.then(429, {"Retry-After": "0"}, times=10)
    with client(url) as c, pytest.raises(RateLimited) as limited:
        c.liveness()
    assert script.hits == 4 and limited.value.retry_after == 0.0


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (422, InvalidRequest),
    ],
)
def test_4xx_are_not_retried(scripted: tuple[str, Script], status: int, exc: type[Exception]) -> None:
    url, script = scripted
    script.then(status)
    with client(url) as c, pytest.raises(exc):
        c.find("mysql", "positions", {"symbol": "BTCUSDT"})
    assert script.hits == 1


def test_async_client_retries_the_same_way(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.then(503).then(429, {"Retry-After": "0"})

    async def run() -> dict[str, Any]:
        async with AsyncDMClient(url, retries=3, backoff=0.01, max_backoff=0.05) as c:
            return await c.liveness()

    assert asyncio.run(run()) == {"status": "ok"}
    assert script.hits == 3
    script.then(422)

    async def bad() -> None:
        async with AsyncDMClient(url, retries=3, backoff=0.01) as c:
            await c.liveness()

    with pytest.raises(InvalidRequest):
        asyncio.run(bad())
    assert script.hits == 4


def test_unreachable_server_is_a_transport_error_and_the_token_stays_out_of_messages() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    secret = "tok-0123456789abcdef"
    c = DMClient(url, token=secret, retries=1, backoff=0.01)
    with pytest.raises(TransportError) as info:
        c.liveness()
    assert secret not in str(info.value) and secret not in repr(c)
    c.close()


def test_a_request_that_got_no_answer_is_a_typed_error_and_not_resent() -> None:
    """A read timeout escaped as a raw httpx.ReadTimeout; it may have been applied, so it is not retried."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])  # read nothing, answer nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with DMClient(url, timeout=0.3, retries=3, backoff=0.01) as c, pytest.raises(NoResponse):
            c.insert("mongodb", "klines_1m", [])

        async def run() -> None:
            async with AsyncDMClient(url, timeout=0.3, retries=3, backoff=0.01) as c:
                await c.insert("mongodb", "klines_1m", [])

        with pytest.raises(NoResponse):
            asyncio.run(run())
        assert len(accepted) == 2  # one connection per client: nothing was sent twice
    finally:
        listener.close()
        thread.join(timeout=5)
        for s in accepted:
            s.close()
