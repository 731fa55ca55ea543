"""Large JSON bodies are parsed off the event loop, in pieces, with ``json.loads``'s exact results and errors."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.json_body import INLINE_JSON_BYTES, BodyRoute, loads_in_pieces

ROUTE_MODULES = (
    "analysis backfill catalog collections config data health ledger lifecycle orderbook platform positions trading"
)


def outcome(body: bytes) -> tuple[str, Any]:
    """What parsing gives: the value, or the exception's type, message and position."""
    try:
        return "ok", json.loads(body)
    except Exception as exc:
        return type(exc).__name__, (str(exc), getattr(exc, "pos", None))


def pieces(body: bytes) -> tuple[str, Any]:
    try:
        return "ok", loads_in_pieces(body)
    except Exception as exc:
        return type(exc).__name__, (str(exc), getattr(exc, "pos", None))


CASES = [
    b'{"records": [{"a": 1}, {"b": [1, 2, {"c": null}]}], "database": "mongodb"}',
    b'  [ 1 , "x" , {"k": [true, false]} ]  ',
    b'{"a": {"b": {"c": [1, 2]}}, "a": 2}',  # duplicate key: the last wins
    b'{"x": "\\ud800"}',  # a lone surrogate escape parses (the field check refuses it later)
    b'{"x": NaN, "y": -Infinity}',
    b'"just a string"',
    b"42",
    b"{}",
    b"[]",
    b'{"a": []}',
    b'\xef\xbb\xbf{"bom": 1}',
    '{"é": "ü"}'.encode("utf-16"),
    b'{"a":1,}',
    b"[1,2,]",
    b'{"a" 1}',
    b'{"a":1 "b":2}',
    b'{"a":[1,2 3]}',
    b"[1]x",
    b"",
    b"   ",
    b"{",
    b'{"a":',
    b'{"records":[{"x":1},',
    b"{'a': 1}",
    b'{"a":' + b"9" * 5000 + b"}",  # past int's digit limit: ValueError, as before
    b'"\xff"',
    b'{"a": "tab\there"}',  # a control character inside a string
    b"[" * 100_000 + b"]" * 100_000,  # too deep: RecursionError, as before
]


@pytest.mark.parametrize("body", CASES, ids=range(len(CASES)))
def test_same_value_or_same_error_as_json_loads(body: bytes) -> None:
    assert pieces(body) == outcome(body)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


JUNK = st.sampled_from([b"", b"x", b",", b"]", b"}", b'"', b" ", b":"])


@settings(max_examples=300, deadline=None)
@given(JSON, st.integers(min_value=0, max_value=10_000), JUNK)
def test_any_document_and_any_corruption_of_it(value: Any, at: int, junk: bytes) -> None:
    body = json.dumps({"records": [value, value], "k": value}, indent=at % 3 or None).encode()
    assert pieces(body) == outcome(body)
    cut = at % (len(body) + 1)
    for broken in (body[:cut], body[:cut] + junk + body[cut:], body[:cut] + body[cut + 1 :]):
        assert pieces(broken) == outcome(broken)


def test_every_route_with_a_body_parses_it_off_the_loop() -> None:
    """A body route on FastAPI's default APIRoute would parse a 4 MiB body on the event loop."""
    left: list[str] = []
    for name in ROUTE_MODULES.split():
        module = importlib.import_module(f"api.routes.{name}")
        for router in (getattr(module, "router", None), getattr(module, "dataset_router", None)):
            for route in getattr(router, "routes", ()):
                if isinstance(route, APIRoute) and route.body_field is not None and not isinstance(route, BodyRoute):
                    left.append(f"{sorted(route.methods)} {route.path}")
    assert left == []


def test_a_large_body_and_a_malformed_one_answer_as_before(sqlite_metadata_url: str) -> None:
    """Through the app: a body over the inline size is read in pieces; a broken one is still FastAPI's 422."""
    from dm_resources.metadata.store import MetadataStore
    from dm_resources.settings import load_settings

    meta = MetadataStore(sqlite_metadata_url)
    meta.migrate()
    settings_ = load_settings(metadata_url=sqlite_metadata_url, api_token="tok-0123456789abcdef")
    big_filter = {"symbol": "BTCUSDT", "strategy_id": {"$in": ["s" * 200] * 400}}
    body = json.dumps({"database": "mysql", "collection": "positions", "filter": big_filter}).encode()
    assert len(body) > INLINE_JSON_BYTES
    try:
        with TestClient(create_app(settings_, meta=meta)) as client:
            auth = {"Authorization": "Bearer tok-0123456789abcdef", "Content-Type": "application/json"}
            ok = client.post("/api/v1/data/query", content=body, headers=auth)
            assert ok.status_code == 200, ok.text
            bad = client.post("/api/v1/data/query", content=body[:-1] + b",", headers=auth)
            assert bad.status_code == 422
            assert bad.json()["detail"][0]["type"] == "json_invalid"
            assert bad.json()["detail"][0]["loc"] == ["body", len(body)]
    finally:
        meta.close()
