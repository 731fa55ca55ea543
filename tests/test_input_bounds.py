"""Bounded input before work, and never a 500 for bad input: each case the API once answered with a 500.

Over real HTTP against SecantusDB and the metadata databases (the platform tests' module
fixtures). The regex check times every compiled pattern of the API on long adversarial
strings: a linear pattern takes microseconds to a few milliseconds at 100,000 characters, a
backtracking one (``\\d+\\.?\\d*`` took 2 s at 8,000) takes minutes, so the generous budget
separates the two without being a benchmark.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

import api
import dm_resources.contracts
import ingest_service.events
from api.contract.filters import ValueProblem, to_datetime, to_decimal
from api.params import ParamError, normalise_pair, parse_after, parse_time
from tests import test_platform_api as platform
from tests.test_platform_api import ENGINE, EXTRACTOR, LEGACY, T0, Env, auth, detail, kline_record

# The platform tests' module fixtures ``env`` and ``http``: the live API over both metadata backends.
env, http = platform.env, platform.http

REGEX_BUDGET_S = 0.5
N = 100_000


def _patterns() -> list[tuple[str, re.Pattern[str]]]:
    """Every module-level compiled regex of the API package and of the shared contracts."""
    modules = [dm_resources.contracts, ingest_service.events]
    for info in pkgutil.walk_packages(api.__path__, "api."):
        if info.name == "api.app":  # building the module-level app is not needed to see its patterns
            continue
        modules.append(importlib.import_module(info.name))
    found: list[tuple[str, re.Pattern[str]]] = []
    for mod in modules:
        for name, value in vars(mod).items():
            if isinstance(value, re.Pattern) and isinstance(value.pattern, str):
                found.append((f"{mod.__name__}.{name}", value))
    return found


ADVERSARIAL = [
    "1" * N + "x",
    "1" * N + ".x",
    "." + "1" * N + "e",
    "1" + "." * N,
    "1e" + "1" * N + "x",
    "T" + "0" * N + " 0",
    "T" + "0:" * (N // 2) + " 00:0x",
    "A" * N + "_",
    "A" * N + "!",
    "é" * N + "!",
    "-" * N,
    " " * N + "x",
    "klines_" + "1" * N,
    "a/" * (N // 2) + "\n",
]


def test_every_api_regex_is_linear_on_long_adversarial_strings() -> None:
    patterns = _patterns()
    assert len(patterns) >= 8, patterns  # the inventory found them (params, filters, datasets, catalog, contracts)
    slow: list[str] = []
    for name, pattern in patterns:
        for text in ADVERSARIAL:
            started = time.perf_counter()
            pattern.match(text)
            pattern.fullmatch(text)
            pattern.search(text[:10_000])  # search retries at every position: a shorter string
            took = time.perf_counter() - started
            if took > REGEX_BUDGET_S:
                slow.append(f"{name} on {text[:12]!r}…: {took:.2f}s")
    assert not slow, slow


def test_parsers_check_length_before_any_regex() -> None:
    for parse in (lambda v: parse_time(v, "start"), lambda v: normalise_pair(v), lambda v: parse_after(v)):
        for text in ADVERSARIAL:
            started = time.perf_counter()
            with pytest.raises(ParamError):
                parse(text)
            assert time.perf_counter() - started < REGEX_BUDGET_S
    for coerce in (to_decimal, to_datetime):
        for text in (*ADVERSARIAL, "²", "1" * 4400, "١٢٣"):
            with pytest.raises(ValueProblem):
                coerce(text)


# --- size limits ----------------------------------------------------------------------------------------


def _raw(url: str, head: bytes, body: bytes = b"") -> bytes:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10) as s:
        s.sendall(head + body)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_an_oversized_body_is_413_naming_the_limit_before_it_is_read(env: Env) -> None:
    # Headers announce 100 MB; nothing of the body is sent. The answer comes without waiting for it.
    head = (
        b"POST /api/v1/data/insert HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000000\r\n\r\n"
    )
    started = time.perf_counter()
    answer = _raw(env.url, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"4194304 bytes" in answer and b"DM_API_MAX_BODY_BYTES" in answer
    assert time.perf_counter() - started < 5  # not the 10 s socket timeout: it did not wait for the body
    # A chunked body (no Content-Length) is counted as it arrives.
    chunk = b"x" * 1_000_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    head = (
        b"POST /api/v1/data/insert HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    assert _raw(env.url, head, body).startswith(b"HTTP/1.1 413")


def test_a_body_under_the_limit_is_served_and_a_long_query_string_is_414(http: httpx.Client) -> None:
    records = [kline_record("BTCUSDT", T0 + i * 900_000, i=i) for i in range(1500)]  # an extractor's batch
    body = {"database": "mongodb", "collection": "klines_15m", "records": records}
    assert http.post("/api/v1/data/insert", json=body, headers=auth(EXTRACTOR)).status_code == 200
    resp = http.get("/api/v1/mysql/positions", params={"filter": "{" + " " * 20_000 + "}"})
    assert resp.status_code == 414 and "16384 bytes" in resp.json()["detail"][0]["msg"]


# --- the 500s of the issue, each a 4xx naming its field --------------------------------------------------------


def test_a_lone_surrogate_fails_its_field_never_the_server(http: httpx.Client, env: Env) -> None:
    good = {"symbol": "BTCUSDT", "position_side": "LONG", "status": "closed", "position_id": "sur-ok"}
    bad = {**good, "position_id": "sur-bad", "strategy_id": "\ud800"}
    meta_key = {**good, "position_id": "sur-meta", "metadata": {"\udc00": 1}}
    raw = json.dumps({"database": "mysql", "collection": "positions", "records": [good, bad, meta_key]})
    resp = http.post("/api/v1/data/insert", content=raw, headers={**auth(ENGINE), "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["inserted_count"] == 1 and [e["index"] for e in out["errors"]] == [1, 2]
    assert "strategy_id" in out["errors"][0]["reason"] and "surrogate" in out["errors"][0]["reason"]
    assert "metadata" in out["errors"][1]["reason"]
    kline = {**kline_record("BTCUSDT", T0 + 70_000 * 900_000), "extractor_version": "\ud83d"}
    raw = json.dumps({"database": "mongodb", "collection": "klines_15m", "records": [kline]})
    resp = http.post(
        "/api/v1/data/insert", content=raw, headers={**auth(EXTRACTOR), "Content-Type": "application/json"}
    )
    assert resp.json()["failed"] == 1 and "extractor_version" in resp.json()["errors"][0]["reason"]
    # Where a whole request is refused, the message shows the character escaped.
    for body, where in (
        ({"database": "\ud800", "collection": "positions"}, "database"),
        ({"database": "mysql", "collection": "positions", "filter": {"strategy_id": "\ud800"}}, "filter"),
        ({"database": "mysql", "collection": "positions", "limit": "\ud800"}, "limit"),
    ):
        resp = http.post("/api/v1/data/query", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert resp.status_code == 422 and where in json.dumps(resp.json()["detail"][0]["loc"]), resp.text


@pytest.mark.parametrize(
    ("value", "needle"),
    [("²", "not ISO-8601"), ("1" * 4300, "longer than 64"), ("9" * 17, "not ISO-8601"), ("１２", "not ISO-8601")],
)
def test_strange_dates_and_huge_numbers_are_422_naming_the_field(http: httpx.Client, value: str, needle: str) -> None:
    body = {"database": "mysql", "collection": "positions", "filter": {"entry_time": {"$gte": value}}}
    assert needle in detail(http.post("/api/v1/data/query", json=body), 422, "filter")
    record = {"symbol": "BTCUSDT", "position_side": "LONG", "entry_time": value}
    out = http.post(
        "/api/v1/data/insert",
        json={"database": "mysql", "collection": "positions", "records": [record]},
        headers=auth(ENGINE),
    ).json()
    assert out["failed"] == 1 and "entry_time" in out["errors"][0]["reason"]


def test_a_number_json_cannot_hold_is_a_400_naming_the_body(http: httpx.Client) -> None:
    raw = '{"database": "mysql", "collection": "positions", "limit": ' + "1" * 4400 + "}"
    resp = http.post("/api/v1/data/query", content=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["detail"][0]["loc"] == ["body"], resp.text
    assert "4300" in resp.json()["detail"][0]["msg"]
    deep = "[" * 100_000 + "]" * 100_000
    resp = http.post("/api/v1/data/query", content=deep, headers={"Content-Type": "application/json"})
    assert 400 <= resp.status_code < 500, resp.text


@pytest.mark.parametrize("fmt", ["json", "ndjson", "arrow", "csv"])
def test_candles_in_year_9999_are_422_not_a_500_or_a_truncated_200(http: httpx.Client, fmt: str) -> None:
    resp = http.get("/data/candles", params={"pair": "BTCUSDT", "period": "1d", "start": "9999-01-01", "format": fmt})
    assert "9998-12-31" in detail(resp, 422, "start")
    resp = http.get("/data/candles", params={"pair": "BTCUSDT", "period": "1d", "end": "9999-06-01", "format": fmt})
    detail(resp, 422, "end")


def test_position_history_from_a_time_that_leaves_the_calendar_in_utc_is_422(http: httpx.Client) -> None:
    detail(http.get("/positions/history", params={"from": "0001-01-01T00:00:00+01:00"}), 422, "from")
    detail(http.get("/positions/history", params={"to": "9999-12-31T23:59:59-01:00"}), 422, "to")


def test_monthly_klines_in_year_9999_are_422(http: httpx.Client) -> None:
    flt = json.dumps({"symbol": "BTCUSDT", "open_time": {"$gte": "9999-12-01T00:00:00Z"}})
    detail(http.get("/api/v1/mongodb/klines_1M", params={"filter": flt}), 422, "filter")
    record = {**kline_record("BTCUSDT", 253_399_622_400_000, interval="1M"), "close_time": None}
    out = http.post(
        "/api/v1/data/insert",
        json={"database": "mongodb", "collection": "klines_1M", "records": [record]},
        headers=auth(EXTRACTOR),
    ).json()
    assert out["failed"] == 1 and "open_time" in out["errors"][0]["reason"]


def test_a_batch_update_or_delete_on_klines_is_405_and_changes_nothing(http: httpx.Client, env: Env) -> None:
    before = env.store.collection("klines").count_documents({})
    for op in ({"type": "update", "filter": {"symbol": "BTCUSDT"}, "data": {"volume": "1"}}, {"type": "delete"}):
        ops: list[dict[str, Any]] = [{"type": "insert", "data": kline_record("BTCUSDT", T0 + 80_000 * 900_000)}, op]
        resp = http.post("/api/v1/mongodb/klines_15m/batch", json={"operations": ops}, headers=auth(LEGACY))
        assert "insert-only" in detail(resp, 405, "collection")
    assert env.store.collection("klines").count_documents({}) == before


def test_streams_without_a_bounded_range_are_422_naming_the_cap(http: httpx.Client) -> None:
    """``format=ndjson`` with no end streamed every trade since 2017 from one request."""
    msg = detail(http.get("/data/trades", params={"pair": "BTCUSDT", "format": "ndjson"}), 422, "start")
    assert "1000000 rows" in msg and "11.5741 days" in msg
    wide = {"pair": "BTCUSDT", "format": "ndjson", "start": "2026-01-01", "end": "2026-02-01"}
    detail(http.get("/data/trades", params=wide), 422, "start")
    ok = {"pair": "BTCUSDT", "format": "ndjson", "start": "2026-01-01", "end": "2026-01-02"}
    assert http.get("/data/trades", params=ok).status_code == 200
    years = {"pair": "BTCUSDT", "format": "ndjson", "start": "2020-01-01", "end": "2026-01-01"}
    assert http.get("/data/funding", params=years).status_code == 200  # 8 h apart: years fit


def test_a_json_field_has_a_size_limit_too(http: httpx.Client) -> None:
    base = {"symbol": "BTCUSDT", "position_side": "SHORT", "status": "closed"}
    records = [
        {**base, "position_id": "json-ok", "metadata": {"note": "x" * 60_000}},
        {**base, "position_id": "json-big", "metadata": {"note": "x" * 70_000}},
        {**base, "position_id": "list-big", "exit_trade_ids": list(range(20_000))},
    ]
    out = http.post(
        "/api/v1/data/insert",
        json={"database": "mysql", "collection": "positions", "records": records},
        headers=auth(ENGINE),
    ).json()
    assert out["inserted_count"] == 1 and [e["index"] for e in out["errors"]] == [1, 2], out
    assert "limit of 65536" in out["errors"][0]["reason"] and "metadata" in out["errors"][0]["reason"]
