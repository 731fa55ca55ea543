"""dm_client's retry policy, idempotency keys and error mapping, against scripted servers on loopback.

The server answers the statuses a test queues (429 with Retry-After, 5xx, 4xx) and records
each request (path as sent, Idempotency-Key), so each test checks what the client sent and how
many times: reads and keyed writes retried, one key per logical write, nothing else resent.
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
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.testing import serve
from dm_client import (
    AsyncDMClient,
    Call,
    Conflict,
    DMClient,
    Forbidden,
    InvalidRequest,
    KeyInUse,
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
        self.queue: deque[tuple[int, dict[str, str], str]] = deque()
        self.hits = 0
        self.auth: list[str | None] = []
        self.keys: list[str | None] = []
        self.paths: list[str] = []

    def then(self, status: int, headers: dict[str, str] | None = None, times: int = 1, kind: str = "t") -> Script:
        for _ in range(times):
            self.queue.append((status, headers or {}, kind))
        return self


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    def anything(path: str, request: Request) -> JSONResponse:
        script.hits += 1
        script.keys.append(request.headers.get("idempotency-key"))
        script.paths.append(request.scope["raw_path"].decode())
        status, headers, kind = script.queue.popleft() if script.queue else (200, {}, "t")
        if status >= 400:
            body = {"detail": [{"loc": ["query", "x"], "msg": f"scripted {status}", "type": kind}]}
            return JSONResponse(body, status_code=status, headers=headers)
        if (request.method == "GET" and path.startswith("api/v1/")) or path == "api/v1/data/query":
            page = {"limit": 1, "offset": 0, "returned": 0, "has_more": False, "next_offset": None}
            return JSONResponse({"data": [], "pagination": page})
        if request.method == "GET" and path.startswith("positions/"):
            return JSONResponse({"position_id": "p", "symbol": "BTCUSDT", "position_side": "LONG", "status": "open"})
        if request.method == "GET":
            return JSONResponse({"status": "ok"})
        return JSONResponse({"inserted_count": 1, "duplicates": 0, "failed": 0, "errors": [], "deleted_count": 0})

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


class Silent:
    """A server that reads each request and closes the connection without answering (a lost response).

    ``answer_after`` connections later it answers 200: the client's retry gets through.
    """

    def __init__(self, answer_after: int | None = None) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.answer_after = answer_after
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    conn.settimeout(5)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data)
                    if self.answer_after is not None and len(self.requests) > self.answer_after:
                        body = b'{"status": "ok"}'
                        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                        conn.sendall(head % len(body) + body)

    def keys(self) -> list[str | None]:
        out: list[str | None] = []
        for raw in self.requests:
            found = [
                ln.split(b":", 1)[1].strip().decode()
                for ln in raw.split(b"\r\n")
                if ln.lower().startswith(b"idempotency-key:")
            ]
            out.append(found[0] if found else None)
        return out

    def close(self) -> None:
        self.listener.close()


def test_a_write_whose_answer_was_lost_is_sent_again_with_the_same_key() -> None:
    """A lost response left the caller with no safe way to retry: now the same key goes with every attempt."""
    server = Silent()
    try:
        with DMClient(server.url, timeout=2, retries=3, backoff=0.01) as c, pytest.raises(NoResponse) as info:
            c.insert("mysql", "positions", [{"symbol": "BTCUSDT", "position_side": "LONG"}])
        keys = server.keys()
        assert len(keys) == 4 and len(set(keys)) == 1 and keys[0] is not None
        assert info.value.idempotency_key == keys[0]  # the caller can retry this write later, safely
        # Passing that key back (a retry later, after a restart) sends it again.
        with DMClient(server.url, timeout=2, retries=0) as c, pytest.raises(NoResponse):
            c.insert("mysql", "positions", [{"symbol": "BTCUSDT", "position_side": "LONG"}], idempotency_key=keys[0])
        assert server.keys()[-1] == keys[0]

        async def run() -> None:
            async with AsyncDMClient(server.url, timeout=2, retries=2, backoff=0.01) as c:
                await c.upsert_daily_pnl("2026-01-01", "1")

        with pytest.raises(NoResponse) as again:
            asyncio.run(run())
        new = server.keys()[-3:]
        assert len(set(new)) == 1 and new[0] == again.value.idempotency_key and new[0] != keys[0]
    finally:
        server.close()


def test_a_write_without_a_key_is_never_sent_twice() -> None:
    server = Silent()
    try:
        with DMClient(server.url, timeout=2, retries=3, backoff=0.01) as c, pytest.raises(NoResponse) as info:
            c.run(Call("POST", "/api/v1/data/insert", body={"records": []}))  # a hand-made call: no key
        assert server.keys() == [None] and info.value.idempotency_key is None
    finally:
        server.close()


def test_a_get_after_a_server_closed_connection_is_retried() -> None:
    """A GET whose connection the server closed raised NoResponse instead of being sent again."""
    server = Silent(answer_after=1)
    try:
        with DMClient(server.url, timeout=2, retries=3, backoff=0.01) as c:
            assert c.liveness() == {"status": "ok"}
        assert len(server.requests) == 2 and server.keys() == [None, None]  # reads carry no key
    finally:
        server.close()


def test_each_logical_write_has_its_own_key_reused_on_its_retries(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.then(503).then(502)
    with client(url) as c:
        c.insert("mysql", "positions", [{"symbol": "BTCUSDT", "position_side": "LONG"}])
        c.insert("mysql", "positions", [{"symbol": "BTCUSDT", "position_side": "LONG"}])
        c.delete("mysql", "positions", {"position_id": "p"}, idempotency_key="my-key-1")
        c.find("mysql", "positions", {"position_id": "p"})
    first, second = script.keys[:3], script.keys[3]
    assert len(set(first)) == 1 and first[0] is not None and second not in (None, first[0])
    assert script.keys[4:] == ["my-key-1", None]
    script.then(503)
    with client(url) as c:
        c.query("mysql", "positions", filter={"position_id": "p"})  # a read sent as POST: retried, no key
    assert script.keys[-2:] == [None, None]


def test_a_key_still_in_use_is_retried_after_its_retry_after_and_a_real_conflict_is_not(
    scripted: tuple[str, Script],
) -> None:
    url, script = scripted
    script.then(409, {"Retry-After": "0"}, kind="idempotency_key_in_flight")
    with client(url) as c:
        c.delete("mysql", "daily_pnl", {"date": "2026-01-01"})
    assert script.hits == 2 and script.keys[0] == script.keys[1]
    script.then(409, kind="value_error")
    with client(url) as c, pytest.raises(Conflict) as info:
        c.delete("mysql", "daily_pnl", {"date": "2026-01-02"})
    assert script.hits == 3 and not isinstance(info.value, KeyInUse) and info.value.idempotency_key


def test_path_parameters_are_encoded(scripted: tuple[str, Script]) -> None:
    """``position("../pnl/daily")`` requested /pnl/daily."""
    url, script = scripted
    with client(url) as c:
        c.position("../pnl/daily")
        c.find("mysql", "positions/../../admin")
        c.analytics("volatility?x=1")
    assert script.paths == [
        "/positions/..%2Fpnl%2Fdaily",
        "/api/v1/mysql/positions%2F..%2F..%2Fadmin",
        "/analysis/volatility%3Fx%3D1",
    ]
